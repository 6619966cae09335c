//! Prometheus metrics (spec §7) and the per-request access record: one log
//! line and the request counters, written when the response body is done
//! (so a stream's line carries its real duration and size).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::body::{Body, BoxError};

type Labels = Vec<(&'static str, String)>;
/// `route`, `transport`, `status`: built per request without allocating
/// (a preset's name is moved in, the rest are static strings).
#[derive(Clone, Debug, PartialEq, Eq)]
struct RequestLabels([(&'static str, Cow<'static, str>); 3]);

/// The family's map hashes what `Hash` writes with SipHash: one word here
/// (the values' fast hash; equality still compares them all) instead of
/// six strings, on every request.
impl std::hash::Hash for RequestLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        static SEED: std::sync::LazyLock<foldhash::fast::RandomState> = std::sync::LazyLock::new(Default::default);
        let [(_, route), (_, transport), (_, status)] = &self.0;
        state.write_u64(std::hash::BuildHasher::hash_one(&*SEED, (route, transport, status)));
    }
}

impl prometheus_client::encoding::EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// All of veilgate's metrics, one set per server.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Histogram,
    first_byte_seconds: Histogram,
    fallbacks: Family<Labels, Counter>,
    continuations: Family<Labels, Counter>,
    tunnels_open: Gauge,
    pool_connections: Gauge,
    limit_refusals: Family<Labels, Counter>,
    store_errors: Counter,
    reloads: Family<Labels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let first_byte_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let fallbacks = Family::<Labels, Counter>::default();
        let continuations = Family::<Labels, Counter>::default();
        let tunnels_open = Gauge::default();
        let pool_connections = Gauge::default();
        let limit_refusals = Family::<Labels, Counter>::default();
        let store_errors = Counter::default();
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "veilgate_config_reloads",
            "Configuration reloads (SIGHUP or a changed file), by result",
            reloads.clone(),
        );
        registry.register(
            "veilgate_limit_refusals",
            "Requests refused by a client's limit, by limit",
            limit_refusals.clone(),
        );
        registry.register("veilgate_store_errors", "Failed writes to the usage store", store_errors.clone());
        registry.register(
            "veilgate_requests",
            "Requests answered, by route, transport and status class",
            requests.clone(),
        );
        registry.register(
            "veilgate_upstream_seconds",
            "Time until the upstream's response head",
            upstream_seconds.clone(),
        );
        registry.register(
            "veilgate_first_byte_seconds",
            "Time until the first body byte reached the client",
            first_byte_seconds.clone(),
        );
        registry.register("veilgate_fallbacks", "Requests sent through fetch, by reason", fallbacks.clone());
        registry.register(
            "veilgate_gemini_continuations",
            "Gemini stream monitor events, by outcome",
            continuations.clone(),
        );
        registry.register("veilgate_tunnels_open", "WebSocket tunnels open", tunnels_open.clone());
        registry.register(
            "veilgate_pool_connections",
            "Idle upstream connections in the keep-alive pool",
            pool_connections.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream_seconds,
            first_byte_seconds,
            fallbacks,
            continuations,
            tunnels_open,
            pool_connections,
            limit_refusals,
            store_errors,
            reloads,
        }
    }

    /// The usage store's error counter (the store moves it).
    pub(crate) fn store_errors(&self) -> Counter {
        self.store_errors.clone()
    }

    /// A request refused by a client's limit (or a price it lacks).
    pub(crate) fn limit_refusal(&self, client: &str, limit: &'static str) {
        self.limit_refusals.get_or_create(&vec![("client", client.to_owned()), ("limit", limit.to_owned())]).inc();
    }

    pub(crate) fn upstream_head(&self, seconds: f64) {
        self.upstream_seconds.observe(seconds);
    }

    /// A configuration reload: `ok` or `error` (the old one stayed).
    pub(crate) fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    pub(crate) fn fallback(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    /// The open-tunnels gauge, for the tunnels of this server to move.
    pub(crate) fn open_tunnels(&self) -> Gauge {
        self.tunnels_open.clone()
    }

    pub(crate) fn continuation(&self, outcome: &'static str) {
        self.continuations.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
    }

    /// The Prometheus text exposition, gauges refreshed; `extra` (families
    /// kept elsewhere, already in the exposition format) goes before the
    /// end marker.
    pub(crate) fn render(&self, pool_idle: usize, extra: &str) -> String {
        self.pool_connections.set(pool_idle as i64);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_ok() {
            if let Some(at) = out.rfind("# EOF") {
                out.insert_str(at, extra);
            }
        } else {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Which kind of route a request took (the access record's `route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteKind {
    /// veilgate's own endpoints and refusals before routing.
    Local,
    Test,
    Preset,
    Generic,
    Tunnel,
}

impl RouteKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RouteKind::Local => "local",
            RouteKind::Test => "test",
            RouteKind::Preset => "preset",
            RouteKind::Generic => "generic",
            RouteKind::Tunnel => "tunnel",
        }
    }
}

/// What the access record says about a request (never its path, query,
/// headers or body).
#[derive(Clone, Debug)]
pub(crate) struct Access {
    pub method: http::Method,
    pub kind: RouteKind,
    pub preset: Option<String>,
    /// `admin` or a client's name (never a token).
    pub client: Option<Arc<str>>,
    pub transport: Option<&'static str>,
    pub status: u16,
    pub started: Instant,
}

impl Access {
    /// `preset name`, `generic`, `tunnel` or `local`, as the metric label
    /// (the preset's name is taken: the record is written once).
    fn take_route_label(&mut self) -> Cow<'static, str> {
        match (self.kind, self.preset.take()) {
            (RouteKind::Tunnel, _) => Cow::Borrowed("tunnel"),
            (RouteKind::Preset, Some(p)) => Cow::Owned(p),
            (RouteKind::Generic, _) => Cow::Borrowed("generic"),
            _ => Cow::Borrowed("local"),
        }
    }
}

/// A response body that writes the access record when it is done.
pub(crate) struct Recorded {
    inner: Body,
    access: Access,
    metrics: Arc<Metrics>,
    bytes: u64,
    first_byte: bool,
    outcome: &'static str,
}

impl Recorded {
    pub(crate) fn wrap(inner: Body, access: Access, metrics: Arc<Metrics>) -> Recorded {
        Recorded { inner, access, metrics, bytes: 0, first_byte: false, outcome: "incomplete" }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if !self.first_byte && len > 0 {
                        self.first_byte = true;
                        let secs = self.access.started.elapsed().as_secs_f64();
                        self.metrics.first_byte_seconds.observe(secs);
                    }
                    self.bytes += len;
                }
            }
            Poll::Ready(Some(Err(_))) => self.outcome = "aborted",
            Poll::Ready(None) => self.outcome = "complete",
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // An empty body that hyper never polled counts as complete.
        let outcome =
            if self.outcome == "incomplete" && self.inner.is_end_stream() { "complete" } else { self.outcome };
        let a = &self.access;
        tracing::info!(
            method = %a.method,
            route = a.kind.as_str(),
            preset = a.preset.as_deref().unwrap_or("-"),
            client = a.client.as_deref().unwrap_or("-"),
            transport = a.transport.unwrap_or("-"),
            status = a.status,
            bytes = self.bytes,
            body = outcome,
            ms = a.started.elapsed().as_millis() as u64,
            "request"
        );
        let class = match a.status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        let transport = a.transport.unwrap_or("none");
        let route = self.access.take_route_label();
        let labels = RequestLabels([
            ("route", route),
            ("transport", Cow::Borrowed(transport)),
            ("status", Cow::Borrowed(class)),
        ]);
        self.metrics.requests.get_or_create(&labels).inc();
    }
}
