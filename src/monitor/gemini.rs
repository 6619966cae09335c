//! Gemini's stream monitor, the pure part: every event of an attempt is
//! inspected before it is forwarded, the attempt's outcome is decided
//! (spec §5), and the attempts are stitched into one stream — seam
//! de-duplicated, late thoughts dropped, usage summed, and a truncated
//! stream never made to look finished. No IO here: [`super::stream`] reads
//! the upstream and writes to the client.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::sse::{Event, Item};

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `STOP` after answer text or a function call; `MAX_TOKENS`.
    Complete,
    /// Blocked, recited, …, or a function call that reached the client:
    /// never retried.
    Final,
    /// Cut off: EOF, a read error, idle, `STOP` with only thoughts, `OTHER`, …
    Interrupted,
}

/// How to keep a waiting client's connection alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// `: keepalive` SSE comments (spec §5).
    Comment,
    /// An event with one empty text part, for Google's own SDKs, whose SSE
    /// readers take every non-`data:` line for JSON and fail on comments.
    EmptyText,
}

impl KeepAlive {
    /// Comments, unless the client is a google-genai SDK (it says so in
    /// `x-goog-api-client` or `user-agent`).
    pub fn for_client(headers: &http::HeaderMap) -> KeepAlive {
        let says_genai =
            |name: &str| headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| v.contains("genai")));
        if says_genai("x-goog-api-client") || says_genai("user-agent") {
            KeepAlive::EmptyText
        } else {
            KeepAlive::Comment
        }
    }
}

/// Why the upstream body ended without a finish reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Eof,
    Error,
    Idle,
}

/// Finish reasons that end the answer for good.
const FINAL_REASONS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
    "LANGUAGE",
    "UNEXPECTED_TOOL_CALL",
];

/// Characters of a continuation's first text held back to find the seam.
pub(crate) const SEAM_WINDOW: usize = 256;
/// Raw bytes the seam window may hold, whatever the events carry: past it
/// the window closes (events without text would otherwise pile up).
pub(crate) const SEAM_HOLD_BYTES: usize = 64 * 1024;
/// The most text (UTF-8 bytes, thoughts and answer together, plus signed
/// parts) carried into a continuation (SPEC §5); past it an interruption
/// ends the stream with the error event instead.
pub const MAX_CARRY_BYTES: usize = 1024 * 1024;
/// Characters of each kind's sent text kept for the seam, whatever the
/// length of the answer.
const TAIL_CHARS: usize = 4096;
/// The shortest repeat that counts as an overlap at the seam.
const MIN_OVERLAP: usize = 8;

/// Classifies a finish reason given what the stream has produced so far.
pub fn classify(reason: &str, has_answer_or_call: bool) -> Outcome {
    match reason {
        "STOP" if has_answer_or_call => Outcome::Complete,
        "MAX_TOKENS" => Outcome::Complete,
        r if FINAL_REASONS.contains(&r) => Outcome::Final,
        // STOP with only thoughts, OTHER, MALFORMED_FUNCTION_CALL,
        // FINISH_REASON_UNSPECIFIED, anything unknown.
        _ => Outcome::Interrupted,
    }
}

/// Which stream of text a part belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Thought,
    Answer,
}

/// An event on its way to the client.
#[derive(Debug)]
struct Pending {
    /// The parsed JSON, when the data was JSON.
    value: Option<Value>,
    raw: Bytes,
    modified: bool,
}

/// The seam window of a continuation attempt.
#[derive(Debug, Default)]
struct Window {
    open: bool,
    kind: Option<Kind>,
    chars: usize,
    held: Vec<Pending>,
    /// Raw bytes of `held`.
    held_bytes: usize,
}

/// What to do after one item.
#[derive(Debug, Default)]
pub struct Step {
    /// Bytes for the client, in order.
    pub forward: Vec<Bytes>,
    /// Set when the event decided the attempt.
    pub outcome: Option<Outcome>,
}

/// The state of one monitored request across its attempts.
#[derive(Debug)]
pub struct Session {
    swallow_thoughts: bool,
    eol: &'static str,
    /// Attempts started (1 = the original request).
    attempt: u32,
    /// Text forwarded to the client so far, by kind (signed parts
    /// excluded), while it fits [`MAX_CARRY_BYTES`] with `signed`.
    answer: String,
    thoughts: String,
    /// Parts carrying a `thoughtSignature`, as they came.
    signed: Vec<Value>,
    /// Bytes of `answer`, `thoughts` and `signed` together.
    carried: usize,
    /// More was forwarded than a continuation may carry: the texts above
    /// stopped growing.
    carry_exceeded: bool,
    /// The end of each kind's forwarded text, for the seam.
    answer_tail: Tail,
    thoughts_tail: Tail,
    /// Answer text or a function call has been seen (forwarded or held).
    has_answer_or_call: bool,
    /// Usage of finished attempts, summed.
    prior_usage: BTreeMap<String, i64>,
    /// Per attempt:
    last_usage: Option<Map<String, Value>>,
    saw_data: bool,
    last_part_is_call: bool,
    window: Window,
}

impl Session {
    pub fn new(swallow_thoughts: bool) -> Session {
        Session {
            swallow_thoughts,
            eol: "\r\n",
            attempt: 0,
            answer: String::new(),
            thoughts: String::new(),
            signed: Vec::new(),
            carried: 0,
            carry_exceeded: false,
            answer_tail: Tail::default(),
            thoughts_tail: Tail::default(),
            has_answer_or_call: false,
            prior_usage: BTreeMap::new(),
            last_usage: None,
            saw_data: false,
            last_part_is_call: false,
            window: Window::default(),
        }
    }

    /// Starts the next attempt (the first, or a continuation).
    pub fn begin_attempt(&mut self) {
        if let Some(usage) = self.last_usage.take() {
            for (k, v) in usage {
                if let Some(n) = v.as_i64() {
                    *self.prior_usage.entry(k).or_default() += n;
                }
            }
        }
        self.attempt += 1;
        self.saw_data = false;
        self.last_part_is_call = false;
        self.window = Window { open: self.attempt > 1, ..Window::default() };
    }

    /// True once this attempt produced a `data:` event (the idle watchdog
    /// is armed from then on).
    pub fn saw_data(&self) -> bool {
        self.saw_data
    }

    pub fn answer(&self) -> &str {
        &self.answer
    }

    pub fn thoughts(&self) -> &str {
        &self.thoughts
    }

    /// True once the stream forwarded more text than a continuation may
    /// carry ([`MAX_CARRY_BYTES`]): an interruption cannot be continued.
    pub fn carry_exceeded(&self) -> bool {
        self.carry_exceeded
    }

    /// Handles one item of the upstream stream.
    pub fn on_item(&mut self, item: Item) -> Step {
        let mut step = Step::default();
        let event = match item {
            Item::Other(raw) => {
                // Comments and data-less blocks: nothing to inspect.
                self.forward_or_hold(Pending { value: None, raw, modified: false }, &mut step, false);
                return step;
            }
            Item::Event(e) => e,
        };
        self.saw_data = true;
        if self.attempt == 1 && self.answer.is_empty() && self.thoughts.is_empty() {
            self.eol = if event.crlf { "\r\n" } else { "\n" };
        }
        let Event { data, raw, .. } = event;
        let Ok(mut value) = serde_json::from_str::<Value>(&data) else {
            self.forward_or_hold(Pending { value: None, raw, modified: false }, &mut step, false);
            return step;
        };
        let mut modified = false;

        if let Some(usage) = value.get("usageMetadata").and_then(Value::as_object) {
            self.last_usage = Some(usage.clone());
        }
        let blocked = value.pointer("/promptFeedback/blockReason").is_some();

        // Late thoughts on a continuation are dropped once the answer began.
        if self.attempt > 1 && self.swallow_thoughts && self.has_answer_or_call {
            modified |= drop_thoughts(&mut value);
        }
        let mut ends_window = false;
        let mut last_is_call = None;
        if let Some(parts) = value.pointer("/candidates/0/content/parts").and_then(Value::as_array) {
            for part in parts {
                if part.get("functionCall").is_some() {
                    self.has_answer_or_call = true;
                    ends_window = true;
                    last_is_call = Some(true);
                    continue;
                }
                let Some(text) = part.get("text").and_then(Value::as_str) else { continue };
                let kind = if is_thought(part) { Kind::Thought } else { Kind::Answer };
                if kind == Kind::Answer && !text.is_empty() {
                    self.has_answer_or_call = true;
                }
                if !text.is_empty() {
                    last_is_call = Some(false);
                }
                if self.window.open {
                    match self.window.kind {
                        None if !text.is_empty() => self.window.kind = Some(kind),
                        Some(k) if k != kind && !text.is_empty() => ends_window = true,
                        _ => {}
                    }
                    if self.window.kind == Some(kind) {
                        self.window.chars += text.chars().count();
                    }
                }
            }
        }
        if let Some(call) = last_is_call {
            self.last_part_is_call = call;
        }

        let reason = value.pointer("/candidates/0/finishReason").and_then(Value::as_str).map(str::to_owned);
        let outcome = if blocked {
            Some(Outcome::Final)
        } else {
            reason.as_deref().map(|r| classify(r, self.has_answer_or_call))
        };
        match outcome {
            Some(Outcome::Interrupted) => {
                // Forwarded without its finishReason: a cut-off stream must
                // never look finished.
                if let Some(c) = value.pointer_mut("/candidates/0").and_then(Value::as_object_mut) {
                    c.remove("finishReason");
                    modified = true;
                }
            }
            Some(_) if self.attempt > 1 => {
                self.sum_usage_into(&mut value);
                modified = true;
            }
            _ => {}
        }
        if outcome.is_some() {
            ends_window = true;
        }
        let pending = Pending { value: Some(value), raw, modified };
        let ends_window = ends_window || self.window.chars >= SEAM_WINDOW;
        self.forward_or_hold(pending, &mut step, ends_window);
        step.outcome = outcome;
        step
    }

    /// The upstream body ended (or went idle) without a finish reason.
    pub fn on_end(&mut self, _why: End) -> Step {
        let mut step = Step::default();
        self.close_window(&mut step);
        step.outcome = Some(if self.last_part_is_call { Outcome::Final } else { Outcome::Interrupted });
        step
    }

    /// Holds `p` in an open seam window, else forwards it. An event with
    /// no text while nothing is held needs no seam and goes on at once;
    /// the window closes once it holds [`SEAM_HOLD_BYTES`].
    fn forward_or_hold(&mut self, p: Pending, step: &mut Step, ends_window: bool) {
        let nothing_to_cut = self.window.held.is_empty() && self.window.kind.is_none();
        if self.window.open && (ends_window || !nothing_to_cut) {
            self.window.held_bytes += p.raw.len();
            self.window.held.push(p);
            if ends_window || self.window.held_bytes >= SEAM_HOLD_BYTES {
                self.close_window(step);
            }
            return;
        }
        self.forward(p, step);
    }

    /// Cuts the seam overlap from the held events and forwards them.
    fn close_window(&mut self, step: &mut Step) {
        if !self.window.open {
            return;
        }
        self.window.open = false;
        let mut held = std::mem::take(&mut self.window.held);
        if let Some(kind) = self.window.kind {
            let sent = match kind {
                Kind::Answer => &self.answer_tail.0,
                Kind::Thought => &self.thoughts_tail.0,
            };
            let new_text: String = held.iter().filter_map(|p| p.value.as_ref()).flat_map(|v| texts(v, kind)).collect();
            let cut = overlap(sent, &new_text);
            if cut > 0 {
                let mut left = cut;
                for p in &mut held {
                    if left == 0 {
                        break;
                    }
                    if let Some(v) = p.value.as_mut() {
                        let before = left;
                        left = trim_leading(v, kind, left);
                        if left != before {
                            p.modified = true;
                        }
                    }
                }
            }
        }
        for p in held {
            self.forward(p, step);
        }
    }

    /// Sends one event on: its raw bytes when untouched, else re-serialised;
    /// an event left with nothing to say is dropped.
    fn forward(&mut self, p: Pending, step: &mut Step) {
        if let Some(v) = &p.value {
            if p.modified && is_empty_event(v) {
                return;
            }
            self.account(v);
        }
        if p.modified
            && let Some(v) = &p.value
        {
            let eol = self.eol;
            step.forward.push(Bytes::from(format!("data: {v}{eol}{eol}")));
        } else {
            step.forward.push(p.raw);
        }
    }

    /// Records what a forwarded event told the client.
    fn account(&mut self, v: &Value) {
        let Some(parts) = v.pointer("/candidates/0/content/parts").and_then(Value::as_array) else { return };
        for part in parts {
            if part.get("thoughtSignature").is_some() {
                let size = part.to_string().len();
                if self.carry(size) {
                    self.signed.push(part.clone());
                }
                continue;
            }
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                let thought = is_thought(part);
                if thought { &mut self.thoughts_tail } else { &mut self.answer_tail }.push(text);
                if self.carry(text.len()) {
                    if thought { &mut self.thoughts } else { &mut self.answer }.push_str(text);
                }
            }
        }
    }

    /// Counts `bytes` more towards what a continuation carries; false (and
    /// from then on) once that is over [`MAX_CARRY_BYTES`].
    fn carry(&mut self, bytes: usize) -> bool {
        self.carried = self.carried.saturating_add(bytes);
        if self.carried > MAX_CARRY_BYTES {
            self.carry_exceeded = true;
        }
        !self.carry_exceeded
    }

    fn sum_usage_into(&self, v: &mut Value) {
        if self.prior_usage.is_empty() {
            return;
        }
        let Some(obj) = v.as_object_mut() else { return };
        let usage = obj.entry("usageMetadata").or_insert_with(|| json!({}));
        let Some(usage) = usage.as_object_mut() else { return };
        // Without usage on the final event, the attempt's last one counts.
        if usage.is_empty()
            && let Some(last) = &self.last_usage
        {
            *usage = last.clone();
        }
        for (k, prior) in &self.prior_usage {
            let current = usage.get(k).and_then(Value::as_i64).unwrap_or(0);
            usage.insert(k.clone(), json!(current + prior));
        }
    }

    /// The continuation request body: the original, with a `model` turn
    /// holding everything said so far and a `user` turn with the prompt
    /// inserted after the last `user` turn.
    pub fn continuation_body(&self, original: &Value, prompt: &str) -> Value {
        let mut body = original.clone();
        let mut parts = Vec::new();
        let text = match (self.thoughts.is_empty(), self.answer.is_empty()) {
            (false, false) => format!("{}\n\n{}", self.thoughts, self.answer),
            _ => format!("{}{}", self.thoughts, self.answer),
        };
        if !text.is_empty() {
            parts.push(json!({ "text": text }));
        }
        parts.extend(self.signed.iter().cloned());
        let mut turns = Vec::new();
        if !parts.is_empty() {
            turns.push(json!({ "role": "model", "parts": parts }));
        }
        turns.push(json!({ "role": "user", "parts": [{ "text": prompt }] }));
        if let Some(contents) = body.get_mut("contents").and_then(Value::as_array_mut) {
            let at = contents
                .iter()
                .rposition(|c| c.get("role").and_then(Value::as_str) == Some("user"))
                .map_or(contents.len(), |i| i + 1);
            for (n, turn) in turns.into_iter().enumerate() {
                contents.insert(at + n, turn);
            }
        }
        body
    }

    /// The final `event: error` after giving up.
    pub fn error_event(&self, code: u16, status: &str, message: &str) -> Bytes {
        let data = json!({ "error": { "code": code, "status": status, "message": message } });
        let eol = self.eol;
        Bytes::from(format!("event: error{eol}data: {data}{eol}{eol}"))
    }

    /// What keeps the client's connection alive while waiting.
    pub fn keepalive(&self, style: KeepAlive) -> Bytes {
        let eol = self.eol;
        match style {
            KeepAlive::Comment => Bytes::from(format!(": keepalive{eol}{eol}")),
            KeepAlive::EmptyText => Bytes::from(format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"\"}}],\"role\":\"model\"}},\"index\":0}}]}}{eol}{eol}"
            )),
        }
    }
}

/// The last [`TAIL_CHARS`] or more characters of a text that grows at the
/// end (trimmed in steps, so each character is moved about once).
#[derive(Debug, Default)]
pub(crate) struct Tail(pub(crate) String);

impl Tail {
    pub(crate) fn push(&mut self, text: &str) {
        self.0.push_str(text);
        let limit = TAIL_CHARS * 4; // bytes: up to 4 per character
        if self.0.len() > 2 * limit {
            let mut cut = self.0.len() - limit;
            while !self.0.is_char_boundary(cut) {
                cut += 1;
            }
            self.0.drain(..cut);
        }
    }
}

/// The text of the user's last turn (for language detection).
pub fn last_user_text(body: &Value) -> String {
    let Some(contents) = body.get("contents").and_then(Value::as_array) else { return String::new() };
    let Some(turn) = contents.iter().rev().find(|c| c.get("role").and_then(Value::as_str) != Some("model")) else {
        return String::new();
    };
    turn.get("parts")
        .and_then(Value::as_array)
        .map(|parts| parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool) == Some(true)
}

/// Texts of one kind in an event, in order.
fn texts(v: &Value, kind: Kind) -> Vec<String> {
    let Some(parts) = v.pointer("/candidates/0/content/parts").and_then(Value::as_array) else { return Vec::new() };
    parts
        .iter()
        .filter(|p| (kind == Kind::Thought) == is_thought(p) && p.get("thoughtSignature").is_none())
        .filter_map(|p| p.get("text").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Removes up to `n` leading characters of `kind` text from the event;
/// returns how many are still to remove.
fn trim_leading(v: &mut Value, kind: Kind, mut n: usize) -> usize {
    let Some(parts) = v.pointer_mut("/candidates/0/content/parts").and_then(Value::as_array_mut) else { return n };
    for part in parts.iter_mut() {
        if n == 0 {
            break;
        }
        if (kind == Kind::Thought) != is_thought(part) || part.get("thoughtSignature").is_some() {
            continue;
        }
        let Some(text) = part.get("text").and_then(Value::as_str) else { continue };
        let len = text.chars().count();
        let take = n.min(len);
        let rest: String = text.chars().skip(take).collect();
        n -= take;
        if let Some(obj) = part.as_object_mut() {
            obj.insert("text".into(), Value::String(rest));
        }
    }
    parts.retain(|p| {
        let empty_text = p.get("text").and_then(Value::as_str) == Some("");
        !(empty_text && p.get("thoughtSignature").is_none() && p.as_object().is_some_and(|o| o.len() <= 2))
    });
    n
}

/// Removes thought parts; true when something was removed.
fn drop_thoughts(v: &mut Value) -> bool {
    let Some(parts) = v.pointer_mut("/candidates/0/content/parts").and_then(Value::as_array_mut) else { return false };
    let before = parts.len();
    parts.retain(|p| !is_thought(p) || p.get("thoughtSignature").is_some());
    parts.len() != before
}

/// An event with no parts, no finish reason and no prompt feedback.
fn is_empty_event(v: &Value) -> bool {
    let parts_empty = v.pointer("/candidates/0/content/parts").and_then(Value::as_array).is_none_or(|p| p.is_empty());
    parts_empty && v.pointer("/candidates/0/finishReason").is_none() && v.get("promptFeedback").is_none()
}

/// The length (in chars) of the longest prefix of `new`, at least
/// [`MIN_OVERLAP`] long, that repeats the end of `sent`.
pub fn overlap(sent: &str, new: &str) -> usize {
    let new_chars: Vec<char> = new.chars().collect();
    let sent_tail: Vec<char> = {
        let count = sent.chars().count();
        sent.chars().skip(count.saturating_sub(new_chars.len())).collect()
    };
    let max = new_chars.len().min(sent_tail.len());
    (MIN_OVERLAP..=max).rev().find(|&k| sent_tail[sent_tail.len() - k..] == new_chars[..k]).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::sse::SseParser;

    fn ev(json: Value) -> Item {
        let text = format!("data: {json}\r\n\r\n");
        let mut p = SseParser::default();
        p.push(text.as_bytes());
        p.next_item().unwrap().unwrap()
    }

    fn part_event(parts: Value, finish: Option<&str>) -> Item {
        let mut cand = json!({ "content": { "parts": parts, "role": "model" }, "index": 0 });
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        ev(json!({ "candidates": [cand], "usageMetadata": { "promptTokenCount": 9, "totalTokenCount": 20 } }))
    }

    fn forwarded_text(steps: &[Step]) -> String {
        steps.iter().flat_map(|s| s.forward.iter()).map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }

    #[test]
    fn outcomes() {
        assert_eq!(classify("STOP", true), Outcome::Complete);
        assert_eq!(classify("STOP", false), Outcome::Interrupted);
        assert_eq!(classify("MAX_TOKENS", false), Outcome::Complete);
        for r in FINAL_REASONS {
            assert_eq!(classify(r, true), Outcome::Final);
        }
        for r in ["OTHER", "MALFORMED_FUNCTION_CALL", "FINISH_REASON_UNSPECIFIED", "NEW_REASON"] {
            assert_eq!(classify(r, true), Outcome::Interrupted, "{r}");
        }
    }

    #[test]
    fn untouched_events_keep_their_bytes_and_interruptions_lose_the_finish() {
        let mut s = Session::new(true);
        s.begin_attempt();
        let a = s.on_item(part_event(json!([{ "text": "thinking", "thought": true }]), None));
        assert!(a.outcome.is_none());
        assert!(forwarded_text(&[a]).contains("\"thought\":true"));
        let b = s.on_item(part_event(json!([{ "text": "more thinking", "thought": true }]), Some("STOP")));
        assert_eq!(b.outcome, Some(Outcome::Interrupted), "STOP with only thoughts");
        let text = forwarded_text(&[b]);
        assert!(!text.contains("finishReason") && text.contains("more thinking"), "{text}");
        assert_eq!(s.thoughts(), "thinkingmore thinking");
        let end = s.on_end(End::Eof);
        assert_eq!(end.outcome, Some(Outcome::Interrupted));
    }

    #[test]
    fn function_call_then_eof_is_final() {
        let mut s = Session::new(true);
        s.begin_attempt();
        s.on_item(part_event(json!([{ "functionCall": { "name": "f", "args": {} } }]), None));
        assert_eq!(s.on_end(End::Eof).outcome, Some(Outcome::Final));
    }

    #[test]
    fn block_reason_is_final() {
        let mut s = Session::new(true);
        s.begin_attempt();
        let step = s.on_item(ev(json!({ "promptFeedback": { "blockReason": "SAFETY" } })));
        assert_eq!(step.outcome, Some(Outcome::Final));
    }

    #[test]
    fn seam_is_deduplicated_and_usage_summed() {
        let mut s = Session::new(true);
        s.begin_attempt();
        s.on_item(part_event(json!([{ "text": "The sky looks blue because of Rayleigh" }]), None));
        assert_eq!(s.on_end(End::Eof).outcome, Some(Outcome::Interrupted));
        s.begin_attempt();
        // The continuation repeats "because of Rayleigh" in two events.
        let a = s.on_item(part_event(json!([{ "text": "because of " }]), None));
        assert!(a.forward.is_empty(), "held back at the seam");
        let b = s.on_item(part_event(json!([{ "text": "Rayleigh scattering." }]), Some("STOP")));
        assert_eq!(b.outcome, Some(Outcome::Complete));
        assert_eq!(s.answer(), "The sky looks blue because of Rayleigh scattering.");
        let text = forwarded_text(&[a, b]);
        let v: Value = serde_json::from_str(text.trim().rsplit("data: ").next().unwrap()).unwrap();
        assert_eq!(v["usageMetadata"]["promptTokenCount"], 18, "summed over both attempts");
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    }

    #[test]
    fn the_seam_window_never_holds_events_without_bound() {
        let mut s = Session::new(true);
        s.begin_attempt();
        s.on_item(part_event(json!([{ "text": "An answer that was cut" }]), None));
        s.on_end(End::Eof);
        s.begin_attempt();
        // Events without text before any text: nothing to cut, forwarded.
        let filler = json!({ "usageMetadata": { "promptTokenCount": 1 }, "pad": "x".repeat(1000) });
        assert_eq!(s.on_item(ev(filler.clone())).forward.len(), 1);
        // After a short text, events without text are held only up to the cap.
        assert!(s.on_item(part_event(json!([{ "text": "ab" }]), None)).forward.is_empty());
        let mut forwarded = 0;
        for _ in 0..1000 {
            forwarded += s.on_item(ev(filler.clone())).forward.len();
        }
        assert!(forwarded >= 900, "only {forwarded} of 1000 events went on; the rest were held");
        assert!(s.window.held_bytes < SEAM_HOLD_BYTES + 2048);
    }

    #[test]
    fn a_long_answer_is_carried_only_up_to_the_limit() {
        let mut s = Session::new(true);
        s.begin_attempt();
        let chunk = "word ".repeat(200); // 1000 bytes
        for _ in 0..3000 {
            s.on_item(part_event(json!([{ "text": chunk }]), None));
        }
        assert!(s.carry_exceeded(), "3 MB forwarded is more than a continuation carries");
        assert!(s.answer().len() <= MAX_CARRY_BYTES, "kept {} bytes", s.answer().len());
        assert!(s.answer_tail.0.len() <= 2 * 4 * TAIL_CHARS);
        // The seam still works against the tail.
        s.on_end(End::Eof);
        s.begin_attempt();
        let step = s.on_item(part_event(json!([{ "text": "word word word more" }]), Some("STOP")));
        let text = forwarded_text(&[step]);
        assert!(text.contains("\"text\":\"more\""), "the seam was cut against the tail: {text}");
    }

    #[test]
    fn late_thoughts_are_swallowed_on_continuations() {
        let mut s = Session::new(true);
        s.begin_attempt();
        s.on_item(part_event(json!([{ "text": "Answer begins" }]), None));
        s.on_end(End::Eof);
        s.begin_attempt();
        let step = s.on_item(part_event(
            json!([{ "text": "late thought", "thought": true }, { "text": " and goes on." }]),
            Some("STOP"),
        ));
        let text = forwarded_text(&[step]);
        assert!(!text.contains("late thought"), "{text}");
        assert_eq!(s.answer(), "Answer begins and goes on.");
    }

    #[test]
    fn continuation_body_shape() {
        let mut s = Session::new(true);
        s.begin_attempt();
        s.on_item(part_event(
            json!([{ "text": "plan", "thought": true }, { "text": "", "thoughtSignature": "c2ln" }]),
            None,
        ));
        s.on_item(part_event(json!([{ "text": "Half an ans" }]), None));
        let original = json!({
            "contents": [{ "role": "user", "parts": [{ "text": "Q" }] }],
            "generationConfig": { "thinkingConfig": { "includeThoughts": true } }
        });
        let body = s.continuation_body(&original, "go on");
        let contents = body["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3);
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(contents[1]["parts"][0]["text"], "plan\n\nHalf an ans");
        assert_eq!(contents[1]["parts"][1], json!({ "text": "", "thoughtSignature": "c2ln" }));
        assert_eq!(contents[2], json!({ "role": "user", "parts": [{ "text": "go on" }] }));
        assert_eq!(body["generationConfig"], original["generationConfig"]);
    }

    #[test]
    fn overlaps() {
        assert_eq!(overlap("The sky is blue because", "blue because of light"), 12);
        assert_eq!(overlap("abc", "abcdefgh"), 0);
        assert_eq!(overlap("1234567", "1234567 more"), 0, "7 chars is too short");
        assert_eq!(overlap("xx12345678", "12345678yy"), 8);
        assert_eq!(overlap("天空是蓝色的因为瑞利散射", "因为瑞利散射所以"), 0, "6 chars");
        assert_eq!(overlap("天空是蓝色的，因为瑞利散射", "蓝色的，因为瑞利散射。"), 10);
        assert_eq!(overlap("", "anything at all"), 0);
    }

    #[test]
    fn keepalive_styles() {
        let mut h = http::HeaderMap::new();
        assert_eq!(KeepAlive::for_client(&h), KeepAlive::Comment);
        h.insert("x-goog-api-client", http::HeaderValue::from_static("google-genai-sdk/1.50.0 gl-python/3.11.7"));
        assert_eq!(KeepAlive::for_client(&h), KeepAlive::EmptyText);
        let s = Session::new(true);
        assert_eq!(&s.keepalive(KeepAlive::Comment)[..], b": keepalive\r\n\r\n");
        let ev = s.keepalive(KeepAlive::EmptyText);
        let json: Value =
            serde_json::from_str(std::str::from_utf8(&ev).unwrap().trim().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(json["candidates"][0]["content"]["parts"][0]["text"], "");
    }

    #[test]
    fn last_user_message() {
        let body = json!({ "contents": [
            { "role": "user", "parts": [{ "text": "first" }] },
            { "role": "model", "parts": [{ "text": "reply" }] },
            { "role": "user", "parts": [{ "text": "Warum" }, { "text": "ist das so?" }] }
        ]});
        assert_eq!(last_user_text(&body), "Warum ist das so?");
    }
}
