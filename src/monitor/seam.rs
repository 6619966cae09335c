//! The seam between a stream's attempts (SPEC §14), for every protocol
//! whose events carry text deltas: what was delivered (while it fits
//! [`MAX_CARRY_BYTES`], the continuation's prefill), and how a
//! continuation's first text is cut — a restart from the beginning, a
//! repeated tail of at least 8 characters, or nothing. Only a tail of the
//! delivered text is compared, and a continuation's chunks are held only
//! until [`SEAM_WINDOW`] characters (or [`SEAM_HOLD_BYTES`]) decide.

use std::marker::PhantomData;

use bytes::Bytes;
use serde_json::Value;

use super::gemini::{MAX_CARRY_BYTES, SEAM_HOLD_BYTES, SEAM_WINDOW, Step, Tail, overlap};

/// How one protocol's events carry text.
pub(crate) trait Shape {
    /// The answer text an event adds, if any.
    fn text(v: &Value) -> Option<&str>;
    /// Replaces that text; false when the event has none.
    fn set_text(v: &mut Value, text: &str) -> bool;
    /// An event that, once cut, has nothing left to say (dropped).
    fn is_empty(v: &Value) -> bool;
    /// A changed event as the stream writes it.
    fn encode(v: &Value, eol: &str) -> Bytes;
}

/// An event on its way to the client.
#[derive(Debug)]
pub(crate) struct Held {
    /// The parsed JSON, when the data was JSON.
    pub value: Option<Value>,
    /// The block exactly as received.
    pub raw: Bytes,
    pub modified: bool,
}

#[derive(Debug)]
enum Seam {
    /// The first attempt, or the seam is behind us: events go on.
    Passing,
    /// A continuation's first events, held until their text decides.
    Holding { held: Vec<Held>, text: String, bytes: usize },
    /// The continuation restarted from the beginning: its text is dropped
    /// while it repeats what was delivered (`at`: bytes matched so far).
    Restarting { at: usize },
}

/// The delivered text and the seam of the attempt under way.
#[derive(Debug)]
pub(crate) struct Stitch<S> {
    delivered: String,
    delivered_bytes: usize,
    carry_exceeded: bool,
    tail: Tail,
    seam: Seam,
    /// Line ends of the client's stream.
    pub eol: &'static str,
    shape: PhantomData<S>,
}

impl<S> Default for Stitch<S> {
    fn default() -> Stitch<S> {
        Stitch {
            delivered: String::new(),
            delivered_bytes: 0,
            carry_exceeded: false,
            tail: Tail::default(),
            seam: Seam::Passing,
            eol: "\n",
            shape: PhantomData,
        }
    }
}

impl<S: Shape> Stitch<S> {
    /// The text delivered so far (up to [`MAX_CARRY_BYTES`]).
    pub(crate) fn delivered(&self) -> &str {
        &self.delivered
    }

    pub(crate) fn carry_exceeded(&self) -> bool {
        self.carry_exceeded
    }

    /// A block without data (a comment, a keep-alive): through the seam
    /// as it came.
    pub(crate) fn other(&mut self, raw: Bytes) -> Step {
        let mut step = Step::default();
        self.push(Held { value: None, raw, modified: false }, &mut step, false);
        step
    }

    /// An attempt starts: a continuation after text holds its first events.
    pub(crate) fn begin(&mut self, continuation: bool) {
        self.seam = if continuation && !self.delivered.is_empty() {
            Seam::Holding { held: Vec::new(), text: String::new(), bytes: 0 }
        } else {
            Seam::Passing
        };
    }

    /// An event through the seam: held, cut, or passed. `decides`: the
    /// event ends what a seam may wait for (a finish).
    pub(crate) fn push(&mut self, h: Held, step: &mut Step, decides: bool) {
        match &mut self.seam {
            Seam::Passing => self.forward(h, step),
            Seam::Restarting { at } => {
                let at = *at;
                let mut h = h;
                if let Some(text) = h.value.as_ref().and_then(S::text).map(str::to_owned) {
                    let left = &self.delivered[at..];
                    if left.starts_with(text.as_str()) {
                        self.seam = Seam::Restarting { at: at + text.len() };
                        set_text::<S>(&mut h, "");
                    } else if text.starts_with(left) {
                        // The restart reached what is new.
                        let cut = left.len();
                        set_text::<S>(&mut h, &text[cut..]);
                        self.seam = Seam::Passing;
                    } else {
                        // Not a restart after all: the rest as it comes.
                        self.seam = Seam::Passing;
                    }
                }
                self.forward(h, step);
            }
            Seam::Holding { held, text, bytes } => {
                if let Some(t) = h.value.as_ref().and_then(S::text) {
                    text.push_str(t);
                }
                *bytes += h.raw.len();
                held.push(h);
                if decides || text.chars().count() >= SEAM_WINDOW || *bytes >= SEAM_HOLD_BYTES {
                    self.close(step);
                }
            }
        }
    }

    /// Decides the held text — a restart, a repeated tail, or new — and
    /// forwards what is left of it.
    pub(crate) fn close(&mut self, step: &mut Step) {
        let Seam::Holding { held, text, .. } = std::mem::replace(&mut self.seam, Seam::Passing) else { return };
        let common = common_prefix(&self.delivered, &text);
        let cut = if text.is_empty() {
            0
        } else if common == text.len() && text.len() < self.delivered.len() {
            // So far it says what was said from the start: a restart.
            self.seam = Seam::Restarting { at: text.len() };
            text.len()
        } else if common == self.delivered.len() {
            common
        } else {
            // A repeated tail (chars → bytes of `text`).
            let chars = overlap(&self.tail.0, &text);
            text.char_indices().nth(chars).map_or(text.len(), |(i, _)| i)
        };
        let mut left = cut;
        for mut h in held {
            if left > 0
                && let Some(t) = h.value.as_ref().and_then(S::text).map(str::to_owned)
            {
                let take = left.min(t.len());
                left -= take;
                set_text::<S>(&mut h, &t[take..]);
            }
            self.forward(h, step);
        }
    }

    /// Sends an event on (its raw bytes when untouched) and records its text.
    fn forward(&mut self, h: Held, step: &mut Step) {
        if let Some(v) = &h.value {
            if h.modified && S::is_empty(v) {
                return;
            }
            if let Some(text) = S::text(v) {
                self.tail.push(text);
                self.delivered_bytes = self.delivered_bytes.saturating_add(text.len());
                if self.delivered_bytes > MAX_CARRY_BYTES {
                    self.carry_exceeded = true;
                } else {
                    self.delivered.push_str(text);
                }
            }
        }
        match (&h.value, h.modified) {
            (Some(v), true) => step.forward.push(S::encode(v, self.eol)),
            _ => step.forward.push(h.raw),
        }
    }
}

/// A `messages` request continued (§14): the original with an `assistant`
/// message holding `said`, then the prompt as a `user` message — or, with
/// no prompt, ending in the assistant message (a prefill). Cut before any
/// text: the original as it was.
pub(crate) fn continued_messages(original: &Value, said: &str, prefill_text: &str, prompt: Option<&str>) -> Value {
    let mut body = original.clone();
    if said.is_empty() {
        return body;
    }
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        let content = if prompt.is_some() { said } else { prefill_text };
        messages.push(serde_json::json!({ "role": "assistant", "content": content }));
        if let Some(prompt) = prompt {
            messages.push(serde_json::json!({ "role": "user", "content": prompt }));
        }
    }
    body
}

/// The text of the last `user` message of a `messages` request (OpenAI's
/// and Anthropic's shape: a string, or parts with `text`), for the
/// continuation prompt's language.
pub(crate) fn last_user_message(original: &Value) -> String {
    let Some(messages) = original.get("messages").and_then(Value::as_array) else { return String::new() };
    let Some(m) = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")) else {
        return String::new();
    };
    match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

fn set_text<S: Shape>(h: &mut Held, text: &str) {
    if let Some(v) = h.value.as_mut()
        && S::set_text(v, text)
    {
        h.modified = true;
    }
}

/// Bytes of the longest common prefix (at a character boundary).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices().zip(b.chars()).find(|((_, x), y)| x != y).map_or(a.len().min(b.len()), |((i, _), _)| i)
}
