//! A scripted Gemini origin: per request, a list of plays — SSE events
//! (CRLF-framed like Google's), pauses, byte-by-byte writes, early EOF,
//! resets, error statuses — and every request body it received.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::origin::{RawOrigin, Step};

/// One thing the origin does while answering.
#[derive(Clone, Debug)]
pub enum Play {
    /// `data: {json}\r\n\r\n` in one chunk.
    Event(Value),
    /// The same, written one byte per chunk.
    EventByteByByte(Value),
    /// Raw bytes in one chunk (odd framings).
    Raw(String),
    Pause(Duration),
    /// Close without ending the chunked body.
    Eof,
    Reset,
    /// Answer with this status and JSON body instead of a stream (must be first).
    Status(u16, Value),
    Hang,
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn steps(plays: &[Play]) -> Vec<Step> {
    if let Some(Play::Status(code, body)) = plays.first() {
        let body = body.to_string();
        return vec![Step::Write(
            format!(
                "HTTP/1.1 {code} Error\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )];
    }
    let mut out =
        vec![Step::text("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")];
    let mut ended = false;
    for play in plays {
        match play {
            Play::Event(v) => out.push(Step::Write(chunk(format!("data: {v}\r\n\r\n").as_bytes()))),
            Play::EventByteByByte(v) => {
                for b in format!("data: {v}\r\n\r\n").bytes() {
                    out.push(Step::Write(chunk(&[b])));
                }
            }
            Play::Raw(s) => out.push(Step::Write(chunk(s.as_bytes()))),
            Play::Pause(d) => out.push(Step::Sleep(*d)),
            Play::Eof => {
                out.push(Step::Close);
                ended = true;
            }
            Play::Reset => {
                out.push(Step::Reset);
                ended = true;
            }
            Play::Hang => {
                out.push(Step::Hang);
                ended = true;
            }
            Play::Status(..) => {}
        }
    }
    if !ended {
        out.push(Step::text("0\r\n\r\n"));
    }
    out
}

/// Starts an origin whose n-th request gets `scripts[n]` (the last script
/// repeats).
pub async fn gemini_origin(scripts: Vec<Vec<Play>>) -> RawOrigin {
    let n = Arc::new(AtomicUsize::new(0));
    RawOrigin::scripted(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst).min(scripts.len() - 1);
        steps(&scripts[i])
    })
    .await
}

/// An event with these parts and an optional finish reason.
pub fn parts(parts: Value, finish: Option<&str>) -> Value {
    let mut candidate = json!({ "content": { "parts": parts, "role": "model" }, "index": 0 });
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": { "promptTokenCount": 9, "candidatesTokenCount": 5, "totalTokenCount": 14 },
        "modelVersion": "gemini-2.5-pro",
        "responseId": "r-1"
    })
}

pub fn thought(text: &str) -> Play {
    Play::Event(parts(json!([{ "text": text, "thought": true }]), None))
}

pub fn answer(text: &str) -> Play {
    Play::Event(parts(json!([{ "text": text }]), None))
}

pub fn finish(text: &str, reason: &str) -> Play {
    Play::Event(parts(json!([{ "text": text }]), Some(reason)))
}

/// A request body as the google-genai SDK sends it.
pub fn request_body(question: &str) -> String {
    json!({
        "contents": [{ "role": "user", "parts": [{ "text": question }] }],
        "generationConfig": { "thinkingConfig": { "includeThoughts": true } }
    })
    .to_string()
}

pub const STREAM_PATH: &str = "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse";

/// What the client received: the events' JSON (in order), `event: error`
/// payloads, keep-alive comments, and the raw text.
#[derive(Debug, Default)]
pub struct Received {
    pub events: Vec<Value>,
    pub errors: Vec<Value>,
    pub keepalives: usize,
    pub raw: String,
}

impl Received {
    pub fn parse(raw: &[u8]) -> Received {
        use veilgate::monitor::sse::{Item, SseParser};
        let mut p = SseParser::default();
        p.push(raw);
        let mut r = Received { raw: String::from_utf8_lossy(raw).into_owned(), ..Received::default() };
        while let Ok(Some(item)) = p.next_item() {
            match item {
                Item::Event(e) if e.event.as_deref() == Some("error") => {
                    r.errors.push(serde_json::from_str(&e.data).expect("error JSON"))
                }
                Item::Event(e) => r.events.push(serde_json::from_str(&e.data).expect("event JSON")),
                Item::Other(raw) if raw.starts_with(b": keepalive") => r.keepalives += 1,
                Item::Other(_) => {}
            }
        }
        r
    }

    /// All text of one kind, concatenated.
    pub fn text(&self, thoughts: bool) -> String {
        let mut out = String::new();
        for e in &self.events {
            for p in e.pointer("/candidates/0/content/parts").and_then(Value::as_array).into_iter().flatten() {
                let is_thought = p.get("thought").and_then(Value::as_bool) == Some(true);
                if is_thought == thoughts
                    && let Some(t) = p.get("text").and_then(Value::as_str)
                {
                    out.push_str(t);
                }
            }
        }
        out
    }

    pub fn finish_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| e.pointer("/candidates/0/finishReason").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }
}
