//! The stream monitor, the IO part (SPEC §5, §14): it reads the upstream
//! SSE stream, lets the protocol's [`Watch`] decide (Gemini's [`Session`],
//! OpenAI's [`super::openai::OpenAiWatch`], Anthropic's), queues what the
//! client gets in a small outbox, and sends continuation requests (the
//! same target, or an alias's next member, with the same transport rules)
//! until the answer is complete, final, or `max_retries` is spent.
//!
//! It runs inside the body the client reads: when the client goes away
//! the body is dropped, and with it the upstream response (closing its
//! connection); nothing new starts.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::body::{Body, BoxError};
use crate::config::GeminiConfig;
use crate::keys::{Credential, Keyring, Tried};
use crate::upstream::UpstreamRequest;
use crate::upstream::choose::Transports;

use super::gemini::{End, KeepAlive, MAX_CARRY_BYTES, Outcome, Session, Step, last_user_text};
use super::prompts;
use super::sse::{Item, MAX_EVENT_BYTES, SseParser};

/// What one protocol's stream means: the pure part of the monitor. It sees
/// every item of every attempt, decides each attempt's outcome, stitches
/// the attempts into one stream, and writes the next attempt's body.
pub(crate) trait Watch: Send + Sync + 'static {
    /// The next attempt starts; its request body has `request_bytes`.
    fn begin_attempt(&mut self, request_bytes: usize);
    /// True once this attempt produced a `data:` event.
    fn saw_data(&self) -> bool;
    fn on_item(&mut self, item: Item) -> Step;
    /// The upstream body ended, broke or went idle.
    fn on_end(&mut self, why: End) -> Step;
    /// More text was delivered than a continuation may carry.
    fn carry_exceeded(&self) -> bool;
    /// The answer (and thoughts) delivered so far, for the prompt's language.
    fn answer(&self) -> &str;
    fn thoughts(&self) -> &str;
    /// The user's last words in the original request.
    fn last_user_text(&self, original: &Value) -> String;
    /// The next attempt's body: with the continuation prompt, or (`None`)
    /// as a prefill of what was said.
    fn continuation_body(&self, original: &Value, prompt: Option<&str>) -> Value;
    /// The in-band error that ends a stream that cannot be completed.
    fn error_event(&self, code: u16, status: &str, message: &str) -> Bytes;
    fn keepalive(&self, style: KeepAlive) -> Bytes;
}

impl Watch for Session {
    fn begin_attempt(&mut self, _request_bytes: usize) {
        Session::begin_attempt(self);
    }
    fn saw_data(&self) -> bool {
        Session::saw_data(self)
    }
    fn on_item(&mut self, item: Item) -> Step {
        Session::on_item(self, item)
    }
    fn on_end(&mut self, why: End) -> Step {
        Session::on_end(self, why)
    }
    fn carry_exceeded(&self) -> bool {
        Session::carry_exceeded(self)
    }
    fn answer(&self) -> &str {
        Session::answer(self)
    }
    fn thoughts(&self) -> &str {
        Session::thoughts(self)
    }
    fn last_user_text(&self, original: &Value) -> String {
        last_user_text(original)
    }
    fn continuation_body(&self, original: &Value, prompt: Option<&str>) -> Value {
        // Gemini continues with the prompt only (§5).
        Session::continuation_body(self, original, prompt.unwrap_or_default())
    }
    fn error_event(&self, code: u16, status: &str, message: &str) -> Bytes {
        Session::error_event(self, code, status, message)
    }
    fn keepalive(&self, style: KeepAlive) -> Bytes {
        Session::keepalive(self, style)
    }
}

/// How a monitor continues (Gemini's `[gemini]`, the others' `[continuation]`).
#[derive(Clone, Debug)]
pub(crate) struct Continuing {
    pub max_retries: u32,
    pub retry_delay: Duration,
    /// Silence between events, once data came, that counts as a cut.
    pub idle_timeout: Duration,
    /// Continue by prefill first (the target continues a trailing
    /// assistant message); a 400 to it falls back to the prompt once.
    pub prefill: bool,
}

/// How often a keep-alive comment is sent while waiting for a continuation.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// The longest backoff between failed continuation requests.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where a continuation may go instead of the target that served the
/// stream: an alias's next member (§14), with its own model, prefill rule
/// and held keys.
pub(crate) struct Elsewhere {
    /// The member's request without a body (origin, path, headers, rules).
    pub request: UpstreamRequest,
    pub model: String,
    pub prefill: bool,
    pub keys: Option<Arc<Keyring>>,
}

impl Elsewhere {
    /// The member's held key for one continuation; `None` (not asked) when
    /// it holds keys and none is usable.
    fn credential(&self) -> Option<Option<Credential>> {
        let Some(ring) = &self.keys else { return Some(None) };
        let key = ring.pick(Tried::default(), Instant::now()).ok()?;
        Some(ring.credential(key, &self.request.origin))
    }
}

/// Everything the monitor needs.
pub(crate) struct Monitored {
    pub transports: Arc<Transports>,
    /// The original request (its body is the original JSON).
    pub request: UpstreamRequest,
    pub original: Value,
    /// The continuation prompts (`[gemini.prompts]`, one set for all).
    pub gemini: Arc<GeminiConfig>,
    pub continuing: Continuing,
    /// Before the first `data:` event (a model may think silently).
    pub response_timeout: Duration,
    pub stats: Arc<dyn Fn(&'static str) + Send + Sync>,
    pub keepalive: KeepAlive,
    /// The alias's next members, in order; once they are spent, the
    /// continuations stay where the last one went.
    pub elsewhere: Vec<Elsewhere>,
}

/// True for `POST …:streamGenerateContent?…alt=sse…` with a JSON body that
/// has `contents`.
pub(crate) fn applies(method: &http::Method, path: &str, body: &[u8]) -> Option<Value> {
    if method != http::Method::POST {
        return None;
    }
    let (path, query) = path.split_once('?')?;
    if !path.ends_with(":streamGenerateContent") || !query.split('&').any(|p| p == "alt=sse") {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("contents")?.as_array()?;
    Some(value)
}

/// True when the first response is an SSE stream the monitor should take.
pub(crate) fn is_event_stream(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::OK
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// Starts the monitor on the first response's body; returns the body the
/// client reads. The monitor runs inside that body, polled by the
/// connection that writes to the client: no task of its own, so no event
/// waits for a wake-up on another thread.
pub(crate) fn spawn<W: Watch>(first: Body, m: Monitored, watch: W) -> Body {
    let out = Tx::default();
    let task = Box::pin(run(first, m, watch, out.clone()));
    Watched { out, task: Some(task) }.boxed_unsync()
}

/// Gemini's monitor (§5) on the first response's body.
pub(crate) fn spawn_gemini(first: Body, m: Monitored) -> Body {
    let session = Session::new(m.gemini.swallow_thoughts_after_retry);
    spawn(first, m, session)
}

/// How many pieces the monitor gets ahead of the client before it waits.
const OUTBOX: usize = 16;

/// What the monitor wrote and the client has not read yet.
#[derive(Clone, Default)]
struct Tx(Arc<Mutex<VecDeque<Bytes>>>);

impl Tx {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Queues `bytes` for the client, first waiting while the client is
/// `OUTBOX` pieces behind. That wait needs no waker: the body returns a
/// piece whenever it polls the monitor with a full queue, so it is polled
/// again once the client read.
async fn send(tx: &Tx, bytes: Bytes) {
    std::future::poll_fn(|_| if tx.queue().len() < OUTBOX { Poll::Ready(()) } else { Poll::Pending }).await;
    tx.queue().push_back(bytes);
}

async fn run<W: Watch>(first: Body, m: Monitored, watch: W, tx: Tx) {
    drive(first, &m, watch, &tx).await;
}

async fn drive<W: Watch>(first: Body, m: &Monitored, mut session: W, tx: &Tx) {
    let last_user = session.last_user_text(&m.original);
    let mut body = first;
    let mut continuations: u32 = 0;
    let mut sent_bytes = m.request.body.len();
    let mut course = Course {
        ahead: m.elsewhere.iter(),
        here: None,
        original: Cow::Borrowed(&m.original),
        prefill: m.continuing.prefill,
    };
    loop {
        session.begin_attempt(sent_bytes);
        let outcome = read_attempt(&mut session, &mut body, m, tx).await;
        drop(body); // closes the upstream connection of this attempt
        match outcome {
            Outcome::Complete => {
                (m.stats)("complete");
                return;
            }
            Outcome::Final => {
                (m.stats)("final");
                return;
            }
            Outcome::Interrupted if session.carry_exceeded() => {
                (m.stats)("too_long");
                let message = format!(
                    "the answer was cut off after more than {} MiB of text, more than a continuation may carry",
                    MAX_CARRY_BYTES >> 20
                );
                send(tx, session.error_event(504, "DEADLINE_EXCEEDED", &message)).await;
                return;
            }
            Outcome::Interrupted => {}
        }
        // An alias's next member continues, when there is one.
        course.move_on();
        // Continue: wait, ask again, until an attempt starts streaming.
        let mut failures: u32 = 0;
        let mut delay = m.continuing.retry_delay;
        body = loop {
            if continuations >= m.continuing.max_retries {
                (m.stats)("exhausted");
                let message = format!("the answer was cut off and {} continuations did not finish it", continuations);
                send(tx, session.error_event(504, "DEADLINE_EXCEEDED", &message)).await;
                return;
            }
            wait(delay, &session, m.keepalive, tx).await;
            continuations += 1;
            (m.stats)("retry");
            let (lang, prompt) = prompts::choose(session.answer(), session.thoughts(), &last_user, &m.gemini.prompts);
            let (prefill, member) = (course.prefill, course.here.is_some());
            tracing::info!(attempt = continuations + 1, lang, prefill, member, "stream interrupted; continuing");
            let continued = session.continuation_body(&course.original, (!prefill).then_some(prompt)).to_string();
            sent_bytes = continued.len();
            let at = course.here.map_or(&m.request, |e| &e.request);
            let credential = match course.here {
                None => Some(m.request.credential.clone()),
                Some(e) => e.credential(),
            };
            let sent = match credential {
                Some(credential) => {
                    let req = UpstreamRequest {
                        method: at.method.clone(),
                        origin: at.origin.clone(),
                        path: at.path.clone(),
                        headers: at.headers.clone(),
                        body: Bytes::from(continued),
                        check: at.check,
                        transport: at.transport,
                        egress: at.egress.clone(),
                        credential,
                    };
                    Some(with_keepalives(m.transports.send(&req), &session, m.keepalive, tx).await)
                }
                // The member has no usable key: not asked.
                None => None,
            };
            match sent {
                Some(Ok(served)) if is_event_stream(served.response.status(), served.response.headers()) => {
                    break served.response.into_body();
                }
                Some(Ok(served)) => {
                    let status = served.response.status();
                    let retry_after = retry_after(served.response.headers());
                    if status == StatusCode::BAD_REQUEST && prefill {
                        // The target does not continue a prefill: the prompt
                        // form, at once; this 400 is nobody's business.
                        course.prefill = false;
                        continuations -= 1;
                        delay = Duration::ZERO;
                        continue;
                    }
                    if course.move_on() {
                        // The next member, after the usual pause.
                        delay = m.continuing.retry_delay;
                        continue;
                    }
                    if matches!(status.as_u16(), 400 | 401 | 403 | 404 | 429) {
                        (m.stats)("refused");
                        let (code, name, message) = upstream_error(served.response).await;
                        send(tx, session.error_event(code, &name, &message)).await;
                        return;
                    }
                    failures += 1;
                    delay = retry_after.unwrap_or_else(|| backoff(m.continuing.retry_delay, failures));
                }
                Some(Err(failure)) => {
                    tracing::debug!(error = %failure.error, "continuation request failed");
                    if course.move_on() {
                        delay = m.continuing.retry_delay;
                        continue;
                    }
                    failures += 1;
                    delay = backoff(m.continuing.retry_delay, failures);
                }
                None => {
                    failures += 1;
                    delay = Duration::ZERO;
                    course.move_on();
                }
            }
        };
    }
}

/// Where continuations go: the serving target until an alias member takes
/// over, with its own model and prefill rule from then on.
struct Course<'m> {
    ahead: std::slice::Iter<'m, Elsewhere>,
    here: Option<&'m Elsewhere>,
    /// The original body, with the model of the member that continues.
    original: Cow<'m, Value>,
    /// Prefill until a target refuses it (then the prompt, once more).
    prefill: bool,
}

impl Course<'_> {
    /// On to the next member; false when there is none.
    fn move_on(&mut self) -> bool {
        let Some(next) = self.ahead.next() else { return false };
        if let Some(model) = self.original.to_mut().get_mut("model") {
            *model = Value::String(next.model.clone());
        }
        self.here = Some(next);
        self.prefill = next.prefill;
        true
    }
}

/// Reads one attempt to its outcome, forwarding as the session decides.
async fn read_attempt<W: Watch>(session: &mut W, body: &mut Body, m: &Monitored, tx: &Tx) -> Outcome {
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    loop {
        let limit = if session.saw_data() { m.continuing.idle_timeout } else { m.response_timeout };
        let frame = tokio::time::timeout(limit, body.frame()).await;
        let end = match frame {
            Err(_) => End::Idle,
            Ok(None) => End::Eof,
            Ok(Some(Err(_))) => End::Error,
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else { continue };
                parser.push(&data);
                loop {
                    let item = match parser.next_item() {
                        Ok(Some(item)) => item,
                        Ok(None) => break,
                        // Unparsable stream: treat like a broken connection.
                        Err(_) => return finish(session.on_end(End::Error), tx).await,
                    };
                    let step = session.on_item(item);
                    for bytes in step.forward {
                        send(tx, bytes).await;
                    }
                    if let Some(outcome) = step.outcome {
                        return outcome;
                    }
                }
                continue;
            }
        };
        return finish(session.on_end(end), tx).await;
    }
}

async fn finish(step: Step, tx: &Tx) -> Outcome {
    for bytes in step.forward {
        send(tx, bytes).await;
    }
    step.outcome.unwrap_or(Outcome::Interrupted)
}

/// Waits `delay`, sending keep-alive comments.
async fn wait<W: Watch>(delay: Duration, session: &W, style: KeepAlive, tx: &Tx) {
    if delay.is_zero() {
        return;
    }
    with_keepalives(tokio::time::sleep(delay), session, style, tx).await
}

/// Runs `fut` while sending `: keepalive` now and every few seconds.
async fn with_keepalives<F: Future, W: Watch>(fut: F, session: &W, style: KeepAlive, tx: &Tx) -> F::Output {
    tokio::pin!(fut);
    send(tx, session.keepalive(style)).await;
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => send(tx, session.keepalive(style)).await,
        }
    }
}

/// Jittered exponential backoff: `base · 2^(n-1)`, ±25 %, at most 30 s.
fn backoff(base: Duration, n: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(10)).min(MAX_BACKOFF);
    let jitter: f64 = 0.75 + rand::random::<f64>() * 0.5;
    exp.mul_f64(jitter)
}

/// `Retry-After` in seconds (HTTP dates are not used by Google's APIs).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_BACKOFF))
}

/// Code, status and message of an upstream error response (Google's JSON
/// shape when it is one).
async fn upstream_error(resp: http::Response<Body>) -> (u16, String, String) {
    let code = resp.status().as_u16();
    let fallback = crate::error::status_name(resp.status());
    let mut body = Vec::new();
    let mut stream = resp.into_body();
    while body.len() < 64 * 1024 {
        match stream.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    body.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = v.pointer("/error/status").and_then(Value::as_str).unwrap_or(fallback).to_owned();
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the continuation request was refused")
        .to_owned();
    (code, status, message)
}

/// The client's body: what the monitor queued, the monitor polled when
/// nothing is queued. Dropping it (the client left) drops the monitor and
/// with it the upstream response, and nothing new starts.
struct Watched {
    out: Tx,
    task: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(bytes) = this.out.queue().pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(task) = this.task.as_mut() else { return Poll::Ready(None) };
        let done = task.as_mut().poll(cx).is_ready();
        if done {
            this.task = None;
        }
        match this.out.queue().pop_front() {
            Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            None if done => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_are_monitored() {
        let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
        let post = http::Method::POST;
        assert!(applies(&post, "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", body).is_some());
        assert!(applies(&post, "/v1beta/models/m:streamGenerateContent?key=k&alt=sse", body).is_some());
        assert!(applies(&post, "/v1beta/models/m:streamGenerateContent", body).is_none(), "JSON array stream");
        assert!(applies(&post, "/v1beta/models/m:generateContent?alt=sse", body).is_none());
        assert!(applies(&http::Method::GET, "/v1beta/models/m:streamGenerateContent?alt=sse", body).is_none());
        assert!(applies(&post, "/v1beta/models/m:streamGenerateContent?alt=sse", b"not json").is_none());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        assert!(backoff(base, 1) <= Duration::from_millis(125));
        assert!(backoff(base, 4) >= Duration::from_millis(600));
        assert!(backoff(base, 30) <= MAX_BACKOFF.mul_f64(1.25));
    }
}
