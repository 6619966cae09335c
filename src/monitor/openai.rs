//! OpenAI chat-completions streams that are never cut off (SPEC §14), the
//! pure part: every chunk is read before it is forwarded; an attempt is
//! finished once choice 0 has a `finish_reason` (then `[DONE]` ends it,
//! added if the upstream closes without one), and interrupted when the
//! stream ends, breaks, goes silent or sends an in-band error before that.
//! Continuations are stitched into the first stream: their chunks carry
//! the first `id`, the text already delivered is cut from them (a restart
//! from the beginning, or a repeated tail of at least 8 characters), usage
//! is summed over the attempts in the final usage chunk, `[DONE]` comes
//! once. A stream cut inside a tool call is not continued: the call cannot
//! be half-issued twice.

use bytes::Bytes;
use serde_json::{Value, json};

use super::gemini::{End, KeepAlive, Outcome, Step};
use super::seam::{Held, Shape, Stitch, continued_messages, last_user_message};
use super::sse::{Event, Item};
use super::stream::Watch;

/// True for a chat-completions request this monitor takes: a POST to
/// `…/chat/completions` whose JSON body asks for a stream of one choice.
pub(crate) fn applies(method: &http::Method, path: &str, body: &[u8]) -> Option<Value> {
    if method != http::Method::POST || !path.split('?').next().unwrap_or(path).ends_with("/chat/completions") {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("messages")?.as_array()?;
    let one_choice = value.get("n").is_none_or(|n| n.as_u64() == Some(1));
    (value.get("stream") == Some(&Value::Bool(true)) && one_choice).then_some(value)
}

/// The state of one monitored chat-completions stream across attempts.
#[derive(Debug)]
pub struct OpenAiWatch {
    eol: &'static str,
    attempt: u32,
    /// The first stream's `id`, which every chunk the client gets carries.
    id: Option<String>,
    /// Choice 0's content delivered, and the seam of continuations.
    stitch: Stitch<Chunks>,
    /// This attempt: choice 0 has its `finish_reason`.
    finished: bool,
    /// A tool call was being streamed and has not finished.
    in_tool_call: bool,
    saw_data: bool,
    done_sent: bool,
    /// Usage of earlier attempts (reported, or estimated when they were
    /// cut before it): prompt, completion.
    prior: (u64, u64),
    /// This attempt's reported usage, its text bytes, its request bytes.
    usage: Option<(u64, u64)>,
    text_bytes: usize,
    request_bytes: usize,
}

impl Default for OpenAiWatch {
    fn default() -> OpenAiWatch {
        OpenAiWatch::new()
    }
}

impl OpenAiWatch {
    pub fn new() -> OpenAiWatch {
        OpenAiWatch {
            eol: "\n",
            attempt: 0,
            id: None,
            stitch: Stitch::default(),
            finished: false,
            in_tool_call: false,
            saw_data: false,
            done_sent: false,
            prior: (0, 0),
            usage: None,
            text_bytes: 0,
            request_bytes: 0,
        }
    }

    fn data(&self, v: &Value) -> Bytes {
        let eol = self.eol;
        Bytes::from(format!("data: {v}{eol}{eol}"))
    }

    fn done(&mut self, step: &mut Step) {
        if !self.done_sent {
            self.done_sent = true;
            let eol = self.eol;
            step.forward.push(Bytes::from(format!("data: [DONE]{eol}{eol}")));
        }
    }

    /// Adds the earlier attempts' usage to a usage chunk.
    fn sum_usage(&self, v: &mut Value) {
        let (p, c) = self.prior;
        let Some(u) = v.get_mut("usage").and_then(Value::as_object_mut) else { return };
        let get = |u: &serde_json::Map<String, Value>, k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (prompt, completion) = (get(u, "prompt_tokens") + p, get(u, "completion_tokens") + c);
        u.insert("prompt_tokens".into(), json!(prompt));
        u.insert("completion_tokens".into(), json!(completion));
        u.insert("total_tokens".into(), json!(prompt + completion));
    }

    fn on_event(&mut self, event: Event) -> Step {
        let mut step = Step::default();
        self.saw_data = true;
        if self.attempt == 1 && self.stitch.delivered().is_empty() {
            self.eol = if event.crlf { "\r\n" } else { "\n" };
            self.stitch.eol = self.eol;
        }
        let Event { data, raw, .. } = event;
        if data.trim() == "[DONE]" {
            if self.finished {
                self.stitch.close(&mut step);
                if !self.done_sent {
                    // As it came.
                    self.done_sent = true;
                    step.forward.push(raw);
                }
                step.outcome = Some(Outcome::Complete);
            } else {
                // `[DONE]` before choice 0 finished: cut off, said politely.
                step.outcome = self.interrupted(&mut step);
            }
            return step;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(&data) else {
            let h = Held { value: None, raw, modified: false };
            self.stitch.push(h, &mut step, false);
            return step;
        };
        if value.get("error").is_some() && !self.finished {
            // An in-band error (overloaded, …): the attempt is cut.
            step.outcome = self.interrupted(&mut step);
            return step;
        }
        let mut modified = false;
        match (&self.id, value.get("id").and_then(Value::as_str)) {
            (None, Some(id)) => self.id = Some(id.to_owned()),
            (Some(first), Some(id)) if first != id => {
                value["id"] = json!(first);
                modified = true;
            }
            _ => {}
        }
        if let Some(u) = value.get("usage").filter(|u| u.is_object()) {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Some((n("prompt_tokens"), n("completion_tokens")));
            if self.attempt > 1 {
                self.sum_usage(&mut value);
                modified = true;
            }
        }
        let choice = value.pointer("/choices/0");
        if choice.and_then(|c| c.pointer("/delta/tool_calls")).is_some() {
            self.in_tool_call = true;
        }
        if let Some(t) = value.pointer("/choices/0/delta/content").and_then(Value::as_str) {
            self.text_bytes += t.len();
        }
        let finish = value.pointer("/choices/0/finish_reason").is_some_and(|f| !f.is_null());
        if finish {
            self.finished = true;
            self.in_tool_call = false;
        }
        // A continuation's role chunk: the client has had one.
        if self.attempt > 1
            && let Some(delta) = value.pointer_mut("/choices/0/delta").and_then(Value::as_object_mut)
            && delta.remove("role").is_some()
        {
            modified = true;
        }
        let h = Held { value: Some(value), raw, modified };
        self.stitch.push(h, &mut step, finish);
        step
    }

    /// What ends an attempt cut short: nothing more of it goes on; a cut
    /// inside a tool call ends the stream with the in-band error.
    fn interrupted(&mut self, step: &mut Step) -> Option<Outcome> {
        self.stitch.close(step);
        if self.in_tool_call {
            let message = "the stream was cut inside a tool call, which cannot be continued";
            step.forward.push(self.error_event(502, "stream_interrupted", message));
            return Some(Outcome::Final);
        }
        Some(Outcome::Interrupted)
    }
}

impl Watch for OpenAiWatch {
    fn begin_attempt(&mut self, request_bytes: usize) {
        if self.attempt > 0 {
            // The attempt just cut: its usage, or its estimate (§11).
            let (p, c) = self.usage.take().unwrap_or((estimate(self.request_bytes), estimate(self.text_bytes)));
            self.prior = (self.prior.0 + p, self.prior.1 + c);
        }
        self.attempt += 1;
        self.request_bytes = request_bytes;
        self.text_bytes = 0;
        self.saw_data = false;
        self.finished = false;
        self.stitch.begin(self.attempt > 1);
    }

    fn saw_data(&self) -> bool {
        self.saw_data
    }

    fn on_item(&mut self, item: Item) -> Step {
        match item {
            Item::Event(e) => self.on_event(e),
            Item::Other(raw) => self.stitch.other(raw),
        }
    }

    fn on_end(&mut self, _why: End) -> Step {
        let mut step = Step::default();
        if self.finished {
            // Finished but closed without `[DONE]`: added.
            self.stitch.close(&mut step);
            self.done(&mut step);
            step.outcome = Some(Outcome::Complete);
        } else {
            step.outcome = self.interrupted(&mut step);
        }
        step
    }

    fn carry_exceeded(&self) -> bool {
        self.stitch.carry_exceeded()
    }

    fn answer(&self) -> &str {
        self.stitch.delivered()
    }

    fn thoughts(&self) -> &str {
        ""
    }

    fn last_user_text(&self, original: &Value) -> String {
        last_user_message(original)
    }

    fn continuation_body(&self, original: &Value, prompt: Option<&str>) -> Value {
        let said = self.stitch.delivered();
        continued_messages(original, said, said, prompt)
    }

    fn error_event(&self, _code: u16, _status: &str, message: &str) -> Bytes {
        let v = json!({ "error": { "message": message, "type": "server_error", "code": "stream_interrupted" } });
        self.data(&v)
    }

    fn keepalive(&self, _style: KeepAlive) -> Bytes {
        let eol = self.eol;
        Bytes::from(format!(": keepalive{eol}{eol}"))
    }
}

/// ⌈bytes / 4⌉, §11's estimate.
fn estimate(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// Choice 0's content delta.
fn content(v: &Value) -> Option<&str> {
    v.pointer("/choices/0/delta/content").and_then(Value::as_str)
}

/// How chat-completion chunks carry text (the seam's view of them).
#[derive(Debug, Default)]
pub(crate) struct Chunks;

impl Shape for Chunks {
    fn text(v: &Value) -> Option<&str> {
        content(v)
    }

    fn set_text(v: &mut Value, text: &str) -> bool {
        match v.pointer_mut("/choices/0/delta/content") {
            Some(slot) => {
                *slot = Value::String(text.to_owned());
                true
            }
            None => false,
        }
    }

    /// No content, tool call, finish reason or usage left.
    fn is_empty(v: &Value) -> bool {
        let choice_empty = v.pointer("/choices/0").is_none_or(|c| {
            let delta_empty = c
                .get("delta")
                .and_then(Value::as_object)
                .is_none_or(|d| d.iter().all(|(k, v)| (k == "content" && v.as_str() == Some("")) || v.is_null()));
            delta_empty && c.get("finish_reason").is_none_or(Value::is_null)
        });
        choice_empty && v.get("usage").is_none_or(Value::is_null)
    }

    fn encode(v: &Value, eol: &str) -> Bytes {
        Bytes::from(format!("data: {v}{eol}{eol}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::sse::SseParser;

    fn items(text: &str) -> Vec<Item> {
        let mut p = SseParser::default();
        p.push(text.as_bytes());
        std::iter::from_fn(|| p.next_item().unwrap()).collect()
    }

    fn chunk(id: &str, text: &str) -> String {
        format!(
            "data: {{\"id\":\"{id}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{text:?}}},\"finish_reason\":null}}]}}\n\n"
        )
    }

    fn finish(id: &str) -> String {
        format!("data: {{\"id\":\"{id}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n")
    }

    /// Feeds an attempt; what the client got and the outcome.
    fn attempt(w: &mut OpenAiWatch, text: &str, end: bool) -> (String, Option<Outcome>) {
        w.begin_attempt(100);
        let mut out = String::new();
        let mut outcome = None;
        for item in items(text) {
            let step = w.on_item(item);
            out.extend(step.forward.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
            if step.outcome.is_some() {
                outcome = step.outcome;
                break;
            }
        }
        if outcome.is_none() && end {
            let step = w.on_end(End::Eof);
            out.extend(step.forward.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
            outcome = step.outcome;
        }
        (out, outcome)
    }

    fn texts(out: &str) -> String {
        items(out)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => serde_json::from_str::<Value>(&e.data).ok(),
                Item::Other(_) => None,
            })
            .filter_map(|v| content(&v).map(str::to_owned))
            .collect()
    }

    #[test]
    fn a_finished_stream_is_forwarded_byte_for_byte_and_done_is_added_once() {
        let mut w = OpenAiWatch::new();
        let stream = format!("{}{}", chunk("a", "Hello"), finish("a"));
        let (out, outcome) = attempt(&mut w, &stream, true);
        assert_eq!(outcome, Some(Outcome::Complete));
        assert_eq!(out, format!("{stream}data: [DONE]\n\n"), "untouched, and [DONE] added at the close");
        let mut w = OpenAiWatch::new();
        let (out, outcome) = attempt(&mut w, &format!("{stream}data: [DONE]\n\n"), true);
        assert_eq!((out.matches("[DONE]").count(), outcome), (1, Some(Outcome::Complete)));
    }

    #[test]
    fn cut_streams_are_interrupted_and_continuations_are_stitched() {
        let mut w = OpenAiWatch::new();
        let (out, outcome) = attempt(&mut w, &format!("{}{}", chunk("a", "The quick brown "), chunk("a", "fox")), true);
        assert_eq!(outcome, Some(Outcome::Interrupted));
        assert_eq!(texts(&out), "The quick brown fox");
        let body = w.continuation_body(&json!({"messages":[{"role":"user","content":"go"}]}), Some("Continue."));
        assert_eq!(body["messages"][1], json!({"role":"assistant","content":"The quick brown fox"}));
        assert_eq!(body["messages"][2], json!({"role":"user","content":"Continue."}));
        // The continuation repeats a tail (" brown fox") and goes on.
        let cont = format!("{}{}{}", chunk("b", " brown fox"), chunk("b", " jumps."), finish("b"));
        let (out, outcome) = attempt(&mut w, &cont, true);
        assert_eq!(outcome, Some(Outcome::Complete));
        assert_eq!(texts(&out), " jumps.");
        assert!(!out.contains("\"id\":\"b\""), "the first stream's id: {out}");
        assert_eq!(out.matches("[DONE]").count(), 1);
    }

    #[test]
    fn a_restart_from_the_beginning_is_cut_and_a_tool_call_cut_is_not_continued() {
        let mut w = OpenAiWatch::new();
        attempt(&mut w, &chunk("a", "One two three four"), true);
        let restart =
            format!("{}{}{}{}", chunk("b", "One two "), chunk("b", "three four"), chunk("b", " five six"), finish("b"));
        let (out, _) = attempt(&mut w, &restart, true);
        assert_eq!(texts(&out), " five six");

        let mut w = OpenAiWatch::new();
        let call = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]},\"finish_reason\":null}]}\n\n";
        let (out, outcome) = attempt(&mut w, call, true);
        assert_eq!(outcome, Some(Outcome::Final), "never continued");
        assert!(out.ends_with("\"code\":\"stream_interrupted\",\"message\":\"the stream was cut inside a tool call, which cannot be continued\",\"type\":\"server_error\"}}\n\n"), "{out}");
        assert!(!out.contains("[DONE]"));
    }

    #[test]
    fn usage_is_summed_over_the_attempts() {
        let mut w = OpenAiWatch::new();
        let first = format!(
            "{}data: {{\"id\":\"a\",\"choices\":[],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":3}}}}\n\n",
            chunk("a", "abcdefgh ijkl")
        );
        attempt(&mut w, &first, true);
        let last = format!(
            "{}{}data: {{\"id\":\"b\",\"choices\":[],\"usage\":{{\"prompt_tokens\":20,\"completion_tokens\":4,\"total_tokens\":24}}}}\n\ndata: [DONE]\n\n",
            chunk("b", " mnop"),
            finish("b")
        );
        let (out, _) = attempt(&mut w, &last, true);
        let usage = items(&out)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => serde_json::from_str::<Value>(&e.data).ok(),
                Item::Other(_) => None,
            })
            .find_map(|v| v.get("usage").cloned())
            .unwrap();
        assert_eq!(usage, json!({"prompt_tokens":30,"completion_tokens":7,"total_tokens":37}));
    }

    #[test]
    fn which_requests_are_watched() {
        let post = http::Method::POST;
        let body = br#"{"model":"m","stream":true,"messages":[]}"#;
        assert!(applies(&post, "/v1/chat/completions", body).is_some());
        assert!(applies(&post, "/v1/chat/completions?x=1", body).is_some());
        assert!(applies(&post, "/v1/completions", body).is_none());
        assert!(applies(&post, "/v1/chat/completions", br#"{"stream":false,"messages":[]}"#).is_none());
        assert!(applies(&post, "/v1/chat/completions", br#"{"stream":true,"n":2,"messages":[]}"#).is_none());
        assert!(applies(&http::Method::GET, "/v1/chat/completions", body).is_none());
    }
}
