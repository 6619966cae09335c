//! Anthropic messages streams that are never cut off (SPEC §14), the pure
//! part. An attempt is finished once a `message_delta` carries a
//! `stop_reason` (any: `end_turn`, `max_tokens`, `tool_use`, …) — then
//! `message_stop` ends it, added if the upstream closes without one — and
//! interrupted when the stream ends, breaks, goes silent or sends an
//! `error` event (`overloaded_error`) before that. Continuations are
//! stitched into the first message: one `message_start`; the continuation's
//! first text block continues the client's open one (its
//! `content_block_start` dropped), later blocks are numbered on; delivered
//! text is cut at the seam; usage is summed in the final `message_delta`;
//! `message_stop` comes once. A stream cut inside a `tool_use` block is not
//! continued.

use bytes::Bytes;
use serde_json::{Value, json};

use super::gemini::{End, KeepAlive, Outcome, Step};
use super::seam::{Held, Shape, Stitch, continued_messages, last_user_message};
use super::sse::{Event, Item};
use super::stream::Watch;

/// True for a messages request this monitor takes: a POST to
/// `…/v1/messages` whose JSON body asks for a stream.
pub(crate) fn applies(method: &http::Method, path: &str, body: &[u8]) -> Option<Value> {
    if method != http::Method::POST || !path.split('?').next().unwrap_or(path).ends_with("/v1/messages") {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("messages")?.as_array()?;
    (value.get("stream") == Some(&Value::Bool(true))).then_some(value)
}

/// What kind of content block is open at the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    ToolUse,
    Other,
}

/// The state of one monitored messages stream across attempts.
#[derive(Debug)]
pub struct AnthropicWatch {
    eol: &'static str,
    attempt: u32,
    stitch: Stitch<Events>,
    /// The client's open block: its index and kind.
    open: Option<(u64, Block)>,
    /// The index the client's next block gets.
    next_index: u64,
    /// This attempt's block indexes → the client's.
    map: Vec<(u64, u64)>,
    finished: bool,
    stop_sent: bool,
    saw_data: bool,
    /// Usage of earlier attempts (input, output), reported or estimated.
    prior: (u64, u64),
    /// This attempt's: input (from `message_start`), output (the last
    /// `message_delta`, cumulative).
    input: Option<u64>,
    output: Option<u64>,
    text_bytes: usize,
    request_bytes: usize,
}

impl Default for AnthropicWatch {
    fn default() -> AnthropicWatch {
        AnthropicWatch::new()
    }
}

impl AnthropicWatch {
    pub fn new() -> AnthropicWatch {
        AnthropicWatch {
            eol: "\n",
            attempt: 0,
            stitch: Stitch::default(),
            open: None,
            next_index: 0,
            map: Vec::new(),
            finished: false,
            stop_sent: false,
            saw_data: false,
            prior: (0, 0),
            input: None,
            output: None,
            text_bytes: 0,
            request_bytes: 0,
        }
    }

    fn encode(&self, v: &Value) -> Bytes {
        Events::encode(v, self.eol)
    }

    /// The client's index for this attempt's block `i` (`None`: unknown).
    fn mapped(&self, i: u64) -> Option<u64> {
        self.map.iter().find(|(from, _)| *from == i).map(|(_, to)| *to)
    }

    /// Rewrites `index` to the client's; true when it changed.
    fn remap(&self, v: &mut Value) -> bool {
        let Some(i) = v.get("index").and_then(Value::as_u64) else { return false };
        match self.mapped(i) {
            Some(to) if to != i => {
                v["index"] = json!(to);
                true
            }
            _ => false,
        }
    }

    fn stop(&mut self, step: &mut Step) {
        if !self.stop_sent {
            self.stop_sent = true;
            step.forward.push(self.encode(&json!({ "type": "message_stop" })));
        }
    }

    fn interrupted(&mut self, step: &mut Step) -> Option<Outcome> {
        self.stitch.close(step);
        if matches!(self.open, Some((_, Block::ToolUse))) {
            let message = "the stream was cut inside a tool_use block, which cannot be continued";
            step.forward.push(self.error_event(502, "api_error", message));
            return Some(Outcome::Final);
        }
        Some(Outcome::Interrupted)
    }

    fn on_event(&mut self, event: Event) -> Step {
        let mut step = Step::default();
        self.saw_data = true;
        if self.attempt == 1 && self.next_index == 0 && self.open.is_none() {
            self.eol = if event.crlf { "\r\n" } else { "\n" };
            self.stitch.eol = self.eol;
        }
        let Event { data, raw, .. } = event;
        let Ok(mut value) = serde_json::from_str::<Value>(&data) else {
            self.stitch.push(Held { value: None, raw, modified: false }, &mut step, false);
            return step;
        };
        let kind = value.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut modified = false;
        match kind.as_str() {
            "error" if !self.finished => {
                step.outcome = self.interrupted(&mut step);
                return step;
            }
            "message_start" => {
                self.input = value.pointer("/message/usage/input_tokens").and_then(Value::as_u64);
                if self.attempt > 1 {
                    // The client has its message.
                    return step;
                }
            }
            "content_block_start" => {
                let i = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = match value.pointer("/content_block/type").and_then(Value::as_str) {
                    Some("text") => Block::Text,
                    Some("tool_use") => Block::ToolUse,
                    _ => Block::Other,
                };
                if self.attempt > 1
                    && self.map.is_empty()
                    && block == Block::Text
                    && let Some((open, Block::Text)) = self.open
                {
                    // The cut text block goes on.
                    self.map.push((i, open));
                    return step;
                }
                let to = self.next_index;
                self.next_index += 1;
                self.map.push((i, to));
                self.open = Some((to, block));
                modified |= self.remap(&mut value);
            }
            "content_block_delta" => {
                modified |= self.remap(&mut value);
                if let Some(t) = Events::text(&value) {
                    self.text_bytes += t.len();
                }
            }
            "content_block_stop" => {
                modified |= self.remap(&mut value);
                self.open = None;
            }
            "message_delta" => {
                if value.pointer("/delta/stop_reason").is_some_and(|r| !r.is_null()) {
                    self.finished = true;
                }
                if let Some(out) = value.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.output = Some(out);
                    if self.attempt > 1 {
                        let (p_in, p_out) = self.prior;
                        value["usage"]["output_tokens"] = json!(out + p_out);
                        if let Some(i) = value.pointer("/usage/input_tokens").and_then(Value::as_u64) {
                            value["usage"]["input_tokens"] = json!(i + p_in);
                        } else if p_in > 0 {
                            value["usage"]["input_tokens"] = json!(self.input.unwrap_or(0) + p_in);
                        }
                        modified = true;
                    }
                }
            }
            "message_stop" => {
                if self.finished {
                    self.stitch.close(&mut step);
                    if !self.stop_sent {
                        self.stop_sent = true;
                        step.forward.push(raw);
                    }
                    step.outcome = Some(Outcome::Complete);
                } else {
                    step.outcome = self.interrupted(&mut step);
                }
                return step;
            }
            _ => {}
        }
        let decides = self.finished;
        self.stitch.push(Held { value: Some(value), raw, modified }, &mut step, decides);
        step
    }
}

impl Watch for AnthropicWatch {
    fn begin_attempt(&mut self, request_bytes: usize) {
        if self.attempt > 0 {
            // The attempt just cut: its usage, or its estimate (§11).
            let input = self.input.take().unwrap_or_else(|| (self.request_bytes as u64).div_ceil(4));
            let output = self.output.take().unwrap_or_else(|| (self.text_bytes as u64).div_ceil(4));
            self.prior = (self.prior.0 + input, self.prior.1 + output);
        }
        self.attempt += 1;
        self.request_bytes = request_bytes;
        self.text_bytes = 0;
        self.saw_data = false;
        self.finished = false;
        self.map.clear();
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
            self.stitch.close(&mut step);
            self.stop(&mut step);
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
        // A prefill may not end in white space (the API refuses it).
        continued_messages(original, said, said.trim_end(), prompt)
    }

    fn error_event(&self, _code: u16, _status: &str, message: &str) -> Bytes {
        self.encode(&json!({ "type": "error", "error": { "type": "api_error", "message": message } }))
    }

    fn keepalive(&self, _style: KeepAlive) -> Bytes {
        self.encode(&json!({ "type": "ping" }))
    }
}

/// How messages-stream events carry text (the seam's view of them).
#[derive(Debug, Default)]
pub(crate) struct Events;

impl Shape for Events {
    fn text(v: &Value) -> Option<&str> {
        if v.get("type").and_then(Value::as_str) != Some("content_block_delta") {
            return None;
        }
        let delta = v.get("delta")?;
        (delta.get("type").and_then(Value::as_str) == Some("text_delta")).then(|| delta.get("text")?.as_str())?
    }

    fn set_text(v: &mut Value, text: &str) -> bool {
        if Events::text(v).is_none() {
            return false;
        }
        match v.pointer_mut("/delta/text") {
            Some(slot) => {
                *slot = Value::String(text.to_owned());
                true
            }
            None => false,
        }
    }

    fn is_empty(v: &Value) -> bool {
        Events::text(v).is_some_and(str::is_empty)
    }

    fn encode(v: &Value, eol: &str) -> Bytes {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("message");
        Bytes::from(format!("event: {kind}{eol}data: {v}{eol}{eol}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::sse::SseParser;

    fn ev(v: Value) -> String {
        format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())
    }

    fn start(id: &str, input: u64) -> String {
        ev(
            json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":input,"output_tokens":1}}}),
        )
    }

    fn block(i: u64, kind: &str) -> String {
        let cb = if kind == "text" {
            json!({"type":"text","text":""})
        } else {
            json!({"type":"tool_use","id":"toolu_1","name":"weather","input":{}})
        };
        ev(json!({"type":"content_block_start","index":i,"content_block":cb}))
    }

    fn text(i: u64, t: &str) -> String {
        ev(json!({"type":"content_block_delta","index":i,"delta":{"type":"text_delta","text":t}}))
    }

    fn stop_block(i: u64) -> String {
        ev(json!({"type":"content_block_stop","index":i}))
    }

    fn delta(out: u64) -> String {
        ev(
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":out}}),
        )
    }

    fn attempt(w: &mut AnthropicWatch, stream: &str) -> (Vec<Value>, Option<Outcome>) {
        w.begin_attempt(100);
        let mut p = SseParser::default();
        p.push(stream.as_bytes());
        let mut out = Vec::new();
        let mut outcome = None;
        let collect = |step: Step, out: &mut Vec<Bytes>| {
            out.extend(step.forward);
            step.outcome
        };
        while let Some(item) = p.next_item().unwrap() {
            if let Some(o) = collect(w.on_item(item), &mut out) {
                outcome = Some(o);
                break;
            }
        }
        if outcome.is_none() {
            outcome = collect(w.on_end(End::Eof), &mut out);
        }
        let mut p = SseParser::default();
        out.iter().for_each(|b| p.push(b));
        let mut events = Vec::new();
        while let Some(Item::Event(e)) = p.next_item().unwrap() {
            events.push(serde_json::from_str(&e.data).unwrap());
        }
        (events, outcome)
    }

    fn texts(events: &[Value]) -> String {
        events.iter().filter_map(Events::text).collect()
    }

    #[test]
    fn a_cut_text_block_is_continued_in_place_and_usage_summed() {
        let mut w = AnthropicWatch::new();
        let first =
            format!("{}{}{}{}", start("msg_a", 20), block(0, "text"), text(0, "Roses are red, "), text(0, "violets"));
        let (events, outcome) = attempt(&mut w, &first);
        assert_eq!(outcome, Some(Outcome::Interrupted));
        assert_eq!(texts(&events), "Roses are red, violets");
        let body = w.continuation_body(&json!({"messages":[{"role":"user","content":"a poem"}]}), None);
        assert_eq!(body["messages"][1], json!({"role":"assistant","content":"Roses are red, violets"}));
        let cont = format!(
            "{}{}{}{}{}{}{}",
            start("msg_b", 30),
            block(0, "text"),
            text(0, "red, violets"),
            text(0, " are blue."),
            stop_block(0),
            delta(6),
            ev(json!({"type":"message_stop"}))
        );
        let (events, outcome) = attempt(&mut w, &cont);
        assert_eq!(outcome, Some(Outcome::Complete));
        assert_eq!(texts(&events), " are blue.", "the repeated tail cut");
        assert!(events.iter().all(|e| e["type"] != "message_start" && e["type"] != "content_block_start"));
        let md = events.iter().find(|e| e["type"] == "message_delta").unwrap();
        assert_eq!(md["usage"]["output_tokens"].as_u64(), Some(6 + 6), "the cut attempt's estimate added");
        assert_eq!(events.iter().filter(|e| e["type"] == "message_stop").count(), 1);
    }

    #[test]
    fn a_missing_message_stop_is_added_and_a_cut_tool_use_is_not_continued() {
        let mut w = AnthropicWatch::new();
        let done = format!("{}{}{}{}{}", start("m", 5), block(0, "text"), text(0, "Hi"), stop_block(0), delta(1));
        let (events, outcome) = attempt(&mut w, &done);
        assert_eq!(outcome, Some(Outcome::Complete));
        assert_eq!(events.last().unwrap(), &json!({"type":"message_stop"}));

        let mut w = AnthropicWatch::new();
        let tool = format!(
            "{}{}{}",
            start("m", 5),
            block(0, "tool_use"),
            ev(
                json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"ci"}})
            )
        );
        let (events, outcome) = attempt(&mut w, &tool);
        assert_eq!(outcome, Some(Outcome::Final));
        assert_eq!(events.last().unwrap()["error"]["type"], "api_error");
        assert!(events.iter().all(|e| e["type"] != "message_stop"));
    }

    #[test]
    fn an_overloaded_error_event_is_an_interruption() {
        let mut w = AnthropicWatch::new();
        let s = format!(
            "{}{}{}{}",
            start("m", 5),
            block(0, "text"),
            text(0, "Part"),
            ev(json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}))
        );
        let (events, outcome) = attempt(&mut w, &s);
        assert_eq!(outcome, Some(Outcome::Interrupted));
        assert!(events.iter().all(|e| e["type"] != "error"), "the upstream's error is not the client's");
    }
}
