//! One metered request (§11): what its body asks for ([`inspect`]), the
//! [`Meter`] that holds its reservation and settles it, and the
//! [`Metered`] response body that reads usage as the bytes pass — the
//! client gets them unchanged, except the one usage chunk veilgate asked an
//! OpenAI stream for on the client's behalf.
//!
//! A meter settles exactly once: when its body ends or is dropped (the
//! client went away), or when the request ends without a body to watch.
//! What the response did not report is estimated (⌈bytes / 4⌉), marked so.

use std::borrow::Cow;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde_json::Value;

use super::count::{Counter, Protocol, Usage, one, string_value, top_level_keys};
use super::ledger::{Ledger, Record, Reservation, Totals};
use super::price::Price;
use super::time::unix_ms;
use crate::body::{Body, BoxError};
use crate::config::{Config, CostHeaders};
use crate::monitor::sse::{Item, SseParser};

/// A JSON answer is read for its usage up to this size (larger ones are
/// estimated).
const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;
/// A non-streaming JSON answer up to this size with a known length is read
/// whole before it is answered, so its headers include it.
pub(crate) const READ_WHOLE_BYTES: u64 = 1024 * 1024;

/// What a metered request's body says.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Inspected {
    /// The request's model (`model`, or Gemini's path).
    pub model: Option<String>,
    /// `max_tokens`, `max_completion_tokens`, `max_output_tokens` or
    /// `generationConfig.maxOutputTokens`.
    pub max_output: Option<u64>,
    /// The body with `stream_options.include_usage = true`, when veilgate
    /// asked for the usage chunk the client did not.
    pub injected: Option<Bytes>,
}

/// Reads a request body (JSON or not: never an error) for its model and
/// output cap, and asks an OpenAI chat stream for usage when told to.
pub(crate) fn inspect(protocol: Option<Protocol>, path: &str, body: &[u8], inject: bool) -> Inspected {
    let route = path.split('?').next().unwrap_or(path);
    // Gemini names the model in the path (so do model-info requests); a
    // body's `model` wins.
    let path_model = || {
        route
            .split_once("/models/")
            .map(|(_, rest)| rest.split([':', '/']).next().unwrap_or(rest).to_owned())
            .filter(|m| !m.is_empty())
    };
    let mut out = Inspected::default();
    if protocol.is_none() || body.is_empty() {
        out.model = path_model();
        return out;
    }
    // The few top-level fields needed; the rest (the messages) is only
    // scanned, never parsed.
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct GenerationConfig {
        #[serde(rename = "maxOutputTokens")]
        max_output_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    let (mut model, mut caps, mut stream, mut asks_usage) = (None, [None; 4], None, false);
    let object = top_level_keys(body, |key, at| {
        let v = &body[at..];
        match key {
            b"model" => model = string_value(v).map(Cow::into_owned),
            b"max_completion_tokens" => caps[0] = one::<u64>(v),
            b"max_tokens" => caps[1] = one::<u64>(v),
            b"max_output_tokens" => caps[2] = one::<u64>(v),
            b"generationConfig" => caps[3] = one::<GenerationConfig>(v).and_then(|g| g.max_output_tokens),
            b"stream" => stream = one::<bool>(v),
            b"stream_options" => {
                asks_usage = one::<StreamOptions>(v).and_then(|o| o.include_usage) == Some(true);
            }
            _ => {}
        }
    });
    if object.is_none() {
        out.model = path_model();
        return out;
    }
    out.model = model.or_else(path_model);
    out.max_output = caps.into_iter().flatten().next();
    if inject
        && protocol == Some(Protocol::OpenAi)
        && route.ends_with("/chat/completions")
        && stream == Some(true)
        && !asks_usage
        && let Ok(mut v) = serde_json::from_slice::<Value>(body)
        && let Some(obj) = v.as_object_mut()
    {
        let options = obj.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
        if !options.is_object() {
            *options = Value::Object(Default::default());
        }
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".to_owned(), Value::Bool(true));
        }
        out.injected = serde_json::to_vec(&v).ok().map(Bytes::from);
    }
    out
}

/// ⌈bytes / 4⌉, the estimate of §11.
pub(crate) fn estimate(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

/// The request side of a meter, set when it is made.
pub(crate) struct MeterSpec {
    pub ledger: Arc<Ledger>,
    pub config: Arc<Config>,
    pub reservation: Option<Reservation>,
    pub client: Arc<str>,
    /// The client's name as a header value.
    pub client_header: HeaderValue,
    pub preset: Option<String>,
    pub protocol: Option<Protocol>,
    pub model: Option<String>,
    /// The price of `model`, looked up when the reservation was made.
    pub price: Option<Price>,
    pub request_bytes: u64,
    /// The usage chunk of the stream is veilgate's, not the client's.
    pub injected: bool,
    pub started: Instant,
    /// The month's figures before this request (for a stream's headers).
    pub before: Totals,
}

/// A request's reservation until it is settled.
pub(crate) struct Meter {
    spec: MeterSpec,
    pub status: u16,
    pub attempts: u32,
    counter: Option<Counter>,
    /// The answer ended as it should (not cut, not abandoned).
    ended: bool,
    /// Bytes of an answer not read as JSON or SSE (an estimate's input).
    answer_bytes: u64,
    settled: Option<f64>,
    /// The month's figures once settled (this request included).
    after: Option<Totals>,
}

impl Meter {
    pub(crate) fn new(spec: MeterSpec) -> Meter {
        let counter = spec.protocol.map(Counter::new);
        Meter { spec, status: 0, attempts: 1, counter, ended: false, answer_bytes: 0, settled: None, after: None }
    }

    pub(crate) fn before(&self) -> &Totals {
        &self.spec.before
    }

    pub(crate) fn client(&self) -> &HeaderValue {
        &self.spec.client_header
    }

    fn feed(&mut self, json: &[u8]) {
        if let Some(c) = &mut self.counter {
            c.feed_json(json);
        }
    }

    /// Counts a whole JSON answer.
    pub(crate) fn feed_json(&mut self, bytes: &[u8]) {
        if let Some(c) = &mut self.counter {
            c.feed_whole(bytes);
        }
    }

    pub(crate) fn mark_ended(&mut self) {
        self.ended = true;
    }

    /// Settles the reservation to what was counted (once); returns this
    /// request's cost when it has a price.
    pub(crate) fn settle(&mut self) -> Option<f64> {
        if self.settled.is_some() {
            return self.settled.filter(|c| c.is_finite());
        }
        let ok = (200..300).contains(&self.status);
        let s = &self.spec;
        let (mut usage, estimated) = match self.counter.take() {
            Some(counter) if ok => {
                // Answer text of the documents read, and the bytes of an
                // answer that could not be read as documents.
                let text = counter.text_bytes() + self.answer_bytes;
                let reported_input = counter.reported_input();
                let saw = counter.saw_usage();
                let mut usage = counter.finish().unwrap_or_default();
                if self.ended && saw {
                    (usage, false)
                } else {
                    usage.input_tokens = reported_input.unwrap_or_else(|| estimate(s.request_bytes));
                    usage.output_tokens = usage.output_tokens.max(estimate(text));
                    (usage, true)
                }
            }
            _ => (Usage::default(), false),
        };
        // The answer's model's price, else the request's.
        let price = match usage.model.as_deref() {
            Some(m) if Some(m) != s.model.as_deref() => s.config.pricing.of(m).copied().or(s.price),
            _ => s.price,
        };
        let cost = price.map(|p| p.cost(&usage));
        // Settled once: the names move into the record.
        let s = &mut self.spec;
        let model = usage.model.take().or_else(|| s.model.take());
        let record = Record {
            time_ms: unix_ms(SystemTime::now()),
            client: Arc::clone(&s.client),
            preset: s.preset.take(),
            model,
            status: self.status,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            cost_usd: cost.unwrap_or(0.0),
            estimated,
            attempts: self.attempts,
            duration_ms: s.started.elapsed().as_millis() as u64,
        };
        let reservation = self.spec.reservation.take();
        self.after = Some(self.spec.ledger.settle(reservation, record));
        self.settled = Some(cost.unwrap_or(f64::NAN));
        cost
    }

    /// An attempt that failed and was sent again (§13): a request of its
    /// own, without tokens, with the status it got.
    pub(crate) fn record_failed_attempt(&self, status: u16, took: std::time::Duration) {
        let s = &self.spec;
        let record = Record {
            time_ms: unix_ms(SystemTime::now()),
            client: Arc::clone(&s.client),
            preset: s.preset.clone(),
            model: s.model.clone(),
            status,
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cache_write_tokens: 0,
            cost_usd: 0.0,
            estimated: false,
            attempts: 1,
            duration_ms: took.as_millis() as u64,
        };
        s.ledger.settle(None, record);
    }

    /// The month's figures now (after settling, they include this request).
    pub(crate) fn totals_now(&self) -> Totals {
        match self.after {
            Some(t) => t,
            None => self.spec.ledger.month_totals(&self.spec.client, unix_ms(SystemTime::now())),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.settle();
    }
}

const CLIENT: HeaderName = HeaderName::from_static("x-veilgate-client");
const MONTHLY_REQUESTS: HeaderName = HeaderName::from_static("x-veilgate-monthly-requests");
const MONTHLY_TOKENS: HeaderName = HeaderName::from_static("x-veilgate-monthly-tokens");
const MONTHLY_COST: HeaderName = HeaderName::from_static("x-veilgate-monthly-cost-usd");
const COST: HeaderName = HeaderName::from_static("x-veilgate-cost-usd");
const AIPROXY_REQUESTS: HeaderName = HeaderName::from_static("monthlyrequests");
const AIPROXY_MONTHLY_COST: HeaderName = HeaderName::from_static("monthlycost");
const AIPROXY_COST: HeaderName = HeaderName::from_static("cost");

/// The figure headers of §11 on a metered response. Their values are
/// written into one buffer and shared from it (one allocation for all).
pub(crate) fn figure_headers(
    h: &mut HeaderMap,
    client: &HeaderValue,
    totals: &Totals,
    cost: Option<f64>,
    mode: CostHeaders,
) {
    let (veilgate, aiproxy) = match mode {
        CostHeaders::Veilgate => (true, false),
        CostHeaders::Aiproxy => (false, true),
        CostHeaders::Both => (true, true),
        CostHeaders::None => (false, false),
    };
    h.reserve(1 + 4 * usize::from(veilgate) + 3 * usize::from(aiproxy));
    h.insert(CLIENT, client.clone());
    if !(veilgate || aiproxy) {
        return;
    }
    let mut buf = BytesMut::with_capacity(4 * 24);
    let requests = put_u64(&mut buf, totals.requests);
    let tokens = put_u64(&mut buf, totals.tokens());
    let monthly_cost = put_usd(&mut buf, totals.cost_usd);
    let this = cost.map(|c| put_usd(&mut buf, c));
    let buf = buf.freeze();
    // Digits and a dot only: always a valid header value.
    let value = |r: &Range<usize>| {
        HeaderValue::from_maybe_shared(buf.slice(r.clone())).unwrap_or(HeaderValue::from_static("0"))
    };
    if veilgate {
        h.insert(MONTHLY_REQUESTS, value(&requests));
        h.insert(MONTHLY_TOKENS, value(&tokens));
        h.insert(MONTHLY_COST, value(&monthly_cost));
        if let Some(c) = &this {
            h.insert(COST, value(c));
        }
    }
    if aiproxy {
        h.insert(AIPROXY_REQUESTS, value(&requests));
        h.insert(AIPROXY_MONTHLY_COST, value(&monthly_cost));
        if let Some(c) = &this {
            h.insert(AIPROXY_COST, value(c));
        }
    }
}

/// Appends `n` in decimal; returns where it is in `buf`.
fn put_u64(buf: &mut BytesMut, n: u64) -> Range<usize> {
    let start = buf.len();
    crate::decimal::put(buf, n);
    start..buf.len()
}

/// Appends dollars as a plain decimal, at most 9 places, no trailing
/// zeros, with integer arithmetic (float formatting cost more than the rest
/// of the headers together); returns where it is in `buf`.
fn put_usd(buf: &mut BytesMut, c: f64) -> Range<usize> {
    let start = buf.len();
    let nano = (c.max(0.0) * 1e9).round();
    if !nano.is_finite() || nano >= 1e19 {
        buf.extend_from_slice(format!("{:.0}", c.max(0.0)).as_bytes());
        return start..buf.len();
    }
    let nano = nano as u64;
    let (whole, frac) = (nano / 1_000_000_000, nano % 1_000_000_000);
    put_u64(buf, whole);
    if frac > 0 {
        let mut digits = [0u8; 9];
        let mut f = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        // frac > 0: some digit is not a zero.
        let used = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        buf.extend_from_slice(b".");
        buf.extend_from_slice(&digits[..used]);
    }
    start..buf.len()
}

/// How the answer is read.
enum Read {
    /// Passed through untouched (an unknown type); bytes counted.
    Bytes,
    Json(BytesMut),
    Sse(SseParser),
}

/// A response body whose usage is read as it passes.
pub(crate) struct Metered {
    /// Before `inner`: dropped first, so a request is settled before its
    /// upstream connection closes.
    meter: Meter,
    inner: Body,
    read: Read,
    /// Forward complete events only, minus veilgate's usage chunk.
    rewrite: bool,
    done: bool,
    /// The answer was cut (an error frame).
    failed: bool,
}

impl Metered {
    pub(crate) fn new(inner: Body, meter: Meter, content_type: Option<&HeaderValue>) -> Metered {
        let ct = content_type.map_or(&b""[..], HeaderValue::as_bytes);
        let read = if meter.counter.is_none() {
            Read::Bytes
        } else if ct.len() >= 17 && ct[..17].eq_ignore_ascii_case(b"text/event-stream") {
            Read::Sse(SseParser::default())
        } else if is_json(ct) {
            Read::Json(BytesMut::new())
        } else {
            Read::Bytes
        };
        let rewrite = meter.spec.injected && matches!(read, Read::Sse(_));
        Metered { inner, meter, read, rewrite, done: false, failed: false }
    }

    /// Reads one chunk; returns what the client gets when rewriting.
    fn take(&mut self, data: &Bytes) -> Option<Bytes> {
        match &mut self.read {
            Read::Bytes => {
                self.meter.answer_bytes += data.len() as u64;
                None
            }
            Read::Json(buf) => {
                if buf.len() + data.len() <= MAX_JSON_BYTES {
                    buf.extend_from_slice(data);
                } else {
                    // Too large to read: measured by its bytes instead.
                    self.meter.answer_bytes += (buf.len() + data.len()) as u64;
                    self.read = Read::Bytes;
                }
                None
            }
            Read::Sse(parser) => {
                parser.push(data);
                let mut out = self.rewrite.then(BytesMut::new);
                loop {
                    match parser.next_item() {
                        Ok(Some(Item::Event(e))) => {
                            let drop = self.rewrite && is_usage_chunk(e.data.as_bytes());
                            self.meter.feed(e.data.as_bytes());
                            if let Some(out) = &mut out
                                && !drop
                            {
                                out.extend_from_slice(&e.raw);
                            }
                        }
                        Ok(Some(Item::Other(raw))) => {
                            if let Some(out) = &mut out {
                                out.extend_from_slice(&raw);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            // Not a stream veilgate can read: the rest passes as it is.
                            let rest = parser.take_pending();
                            if let Some(out) = &mut out {
                                out.extend_from_slice(&rest);
                            }
                            self.read = Read::Bytes;
                            self.rewrite = false;
                            break;
                        }
                    }
                }
                out.map(BytesMut::freeze)
            }
        }
    }

    fn finish(&mut self) -> Option<Bytes> {
        self.meter.mark_ended();
        match std::mem::replace(&mut self.read, Read::Bytes) {
            Read::Json(buf) => {
                if let Some(c) = &mut self.meter.counter {
                    c.feed_whole(&buf);
                }
                None
            }
            Read::Sse(mut parser) => self.rewrite.then(|| parser.take_pending()).filter(|b| !b.is_empty()),
            Read::Bytes => None,
        }
    }
}

/// A JSON `content-type` (`application/json`, `…+json`, any case).
pub(crate) fn is_json(content_type: &[u8]) -> bool {
    content_type.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"))
}

/// OpenAI's usage chunk: no choices, a usage object.
fn is_usage_chunk(json: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default)]
        usage: Option<serde_json::Map<String, Value>>,
    }
    serde_json::from_slice::<Chunk>(json).is_ok_and(|c| c.choices.is_some_and(|ch| ch.is_empty()) && c.usage.is_some())
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Some(data) = frame.data_ref() else { return Poll::Ready(Some(Ok(frame))) };
                    match this.take(data) {
                        None => return Poll::Ready(Some(Ok(frame))),
                        Some(out) if out.is_empty() => continue,
                        Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    }
                }
                Some(Err(e)) => {
                    // Cut: settled now, with what arrived (and estimates).
                    this.failed = true;
                    this.meter.settle();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let rest = this.finish();
                    this.meter.settle();
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (!self.rewrite && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.rewrite { SizeHint::default() } else { self.inner.size_hint() }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // An empty body hyper never polled ended as it should.
        if !self.done && !self.failed && self.inner.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_reads_model_caps_and_injects_only_where_it_should() {
        let chat = br#"{"model":"gpt-4o-mini","stream":true,"max_tokens":50,"messages":[]}"#;
        let i = inspect(Some(Protocol::OpenAi), "/v1/chat/completions", chat, true);
        assert_eq!(i.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(i.max_output, Some(50));
        let body: Value = serde_json::from_slice(i.injected.as_deref().unwrap()).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 50);
        // Other stream_options are kept; include_usage false is overridden.
        let b = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let i = inspect(Some(Protocol::OpenAi), "/v1/chat/completions?a=b", b, true);
        let body: Value = serde_json::from_slice(i.injected.as_deref().unwrap()).unwrap();
        assert_eq!(body["stream_options"], serde_json::json!({"include_usage": true, "x": 1}));
        // Asked already, not streaming, turned off, another protocol or path: untouched.
        let asked = br#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(inspect(Some(Protocol::OpenAi), "/v1/chat/completions", asked, true).injected.is_none());
        let plain = br#"{"model":"m"}"#;
        assert!(inspect(Some(Protocol::OpenAi), "/v1/chat/completions", plain, true).injected.is_none());
        assert!(inspect(Some(Protocol::OpenAi), "/v1/chat/completions", chat, false).injected.is_none());
        assert!(inspect(Some(Protocol::Anthropic), "/v1/chat/completions", chat, true).injected.is_none());
        assert!(inspect(Some(Protocol::OpenAi), "/v1/responses", chat, true).injected.is_none());
        // Gemini names the model in the path; caps in generationConfig.
        let g = br#"{"generationConfig":{"maxOutputTokens":77}}"#;
        let i =
            inspect(Some(Protocol::Gemini), "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", g, true);
        assert_eq!((i.model.as_deref(), i.max_output), (Some("gemini-2.5-flash"), Some(77)));
        // Not JSON: nothing, no error.
        let i = inspect(Some(Protocol::OpenAi), "/v1/chat/completions", b"\xff not json", true);
        assert_eq!(i, Inspected::default());
        assert_eq!(
            inspect(Some(Protocol::Anthropic), "/v1/messages", br#"{"max_tokens":1e400}"#, true).max_output,
            None
        );
    }

    fn usd(c: f64) -> String {
        let mut buf = BytesMut::new();
        put_usd(&mut buf, c);
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn dollars() {
        assert_eq!(usd(0.0), "0");
        assert_eq!(usd(0.000_123), "0.000123");
        assert_eq!(usd(12.5), "12.5");
        assert_eq!(usd(-1.0), "0");
        assert_eq!(usd(0.0000045), "0.0000045");
        assert_eq!(usd(3.000000001), "3.000000001");
        assert_eq!(usd(1e30), "1000000000000000019884624838656");
        assert_eq!(estimate(0), 0);
        assert_eq!(estimate(5), 2);
    }

    #[test]
    fn figure_headers_per_mode() {
        let totals =
            Totals { requests: 1_000_000, input_tokens: 7, output_tokens: 0, cost_usd: 0.25, ..Totals::default() };
        let client = HeaderValue::from_static("alice");
        let shown = |mode, cost| {
            let mut h = HeaderMap::new();
            figure_headers(&mut h, &client, &totals, cost, mode);
            let mut v: Vec<String> = h.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("<bad>"))).collect();
            v.sort();
            v.join(" ")
        };
        assert_eq!(
            shown(CostHeaders::Veilgate, Some(0.000_001)),
            "x-veilgate-client=alice x-veilgate-cost-usd=0.000001 x-veilgate-monthly-cost-usd=0.25 \
             x-veilgate-monthly-requests=1000000 x-veilgate-monthly-tokens=7"
        );
        assert_eq!(
            shown(CostHeaders::Aiproxy, Some(3.0)),
            "cost=3 monthlycost=0.25 monthlyrequests=1000000 x-veilgate-client=alice"
        );
        assert_eq!(shown(CostHeaders::Both, None).split(' ').count(), 6);
        assert_eq!(shown(CostHeaders::None, Some(1.0)), "x-veilgate-client=alice");
    }

    #[test]
    fn the_usage_chunk_is_known_by_its_shape() {
        assert!(is_usage_chunk(br#"{"choices": [], "usage": {"prompt_tokens": 1}}"#));
        assert!(!is_usage_chunk(br#"{"choices": [{"delta": {}}], "usage": {"prompt_tokens": 1}}"#));
        assert!(!is_usage_chunk(br#"{"choices": [], "usage": null}"#));
        assert!(!is_usage_chunk(b"[DONE]"));
    }
}
