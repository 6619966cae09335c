//! The request handler, as the phases a request goes through:
//!
//! 1. **admit** — head size and `Host` check ([`local`]); `OPTIONS` answered;
//! 2. **route** — path → [`Route`] (pure, [`crate::route`]);
//! 3. **plan** — local endpoint or a forward with its target, check,
//!    transport preference, redirects and monitor (pure, [`plan`]);
//! 4. **meter** — a client's request reserves against its limits (429 and
//!    nothing sent when one is reached), [`usage`];
//! 5. **send** — a WebSocket tunnel, or the request through the transports
//!    (socket first, fetch as the fallback);
//! 6. **shape** — response headers for the client ([`shape`]), CORS, the
//!    Gemini monitor on its streams;
//! 7. **tap** — a client's answer is read for its usage as it passes and
//!    the reservation settled ([`crate::usage::meter`]);
//! 8. **record** — one access line and the metrics when the body ends.
//!
//! A per-request [`Ctx`] carries what later phases and the record need.

mod again;
mod local;
mod plan;
mod shape;
pub(crate) use shape::TRANSPORT as TRANSPORT_HEADER;
mod unified;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use self::plan::{Forward, Plan};
use self::shape::{Redirect, RedirectBack, shape_head};
use crate::auth::Token;
use crate::body::{Body, Gathered};
use crate::config::{Config, ConfigError};
use crate::dns::Doh;
use crate::error::Error;
use crate::keys::{Keyring, NoKey, Tried, Verdict};
use crate::metrics::{Access, Metrics, Recorded, RouteKind};
use crate::monitor::gemini::KeepAlive;
use crate::monitor::stream::{self as gemini_stream, Continuing, Monitored};
use crate::policy::headers::{RequestPolicy, UserAgent};
use crate::route::{Route, RouteContext, RouteHeaders, RouteInput, route};
use crate::tunnel::{self, TunnelSettings};
use crate::upstream::choose::{Failure, Served, Transports};
use crate::upstream::connect::{Names, TargetCheck};
use crate::upstream::fetch::FetchTransport;
use crate::upstream::{Preference, SocketTransport, UpstreamRequest, UpstreamSettings, tls};
use crate::usage::count::Protocol;
use crate::usage::ledger::Ledger;
use crate::usage::meter::{self, Meter, Metered};

/// Everything a request handler needs, shared by all connections: the
/// configuration's snapshot, and the state that outlives requests —
/// transports (with their pool and the Cloudflare-challenge memory),
/// metrics.
pub(crate) struct App {
    /// The validated configuration, swappable as a whole (the seam of
    /// live reload); each request loads it once ([`App::snapshot`]).
    config: ArcSwap<Config>,
    pub token: Token,
    /// The address actually bound (refused as an upstream target).
    pub listen: SocketAddr,
    pub transports: Arc<Transports>,
    pub metrics: Arc<Metrics>,
    /// Clients' usage and limits; none while no client is configured
    /// (nothing is metered, no store is opened) — opened by the reload
    /// that adds the first client.
    ledger: arc_swap::ArcSwapOption<Ledger>,
    /// DNS over HTTPS, when `[dns]` names servers (resolver, relay).
    doh: Option<Arc<Doh>>,
}

impl App {
    /// Builds both transports; must run inside a Tokio runtime.
    pub(crate) fn new(config: Config, token: Token, listen: SocketAddr) -> Result<App, ConfigError> {
        let u = &config.upstream;
        let roots = tls::root_store(u.extra_ca_file.as_deref())?;
        let socket_tls = tls::client_config(roots.clone(), &[b"http/1.1"])?;
        let fetch_tls = tls::client_config(roots, &[b"h2", b"http/1.1"])?;
        let settings = UpstreamSettings {
            connect_timeout: u.connect_timeout,
            response_timeout: u.response_timeout,
            idle_timeout: u.idle_timeout,
            pool_idle_timeout: u.pool_idle_timeout,
            max_response_head_bytes: config.limits.max_response_head_bytes,
            max_connections: config.limits.max_upstream_connections,
        };
        let mut socket = SocketTransport::new(settings.clone(), Arc::clone(&socket_tls));
        // DNS over HTTPS has its own transport: its servers are addresses
        // (literals, or the bootstrap ones), so its connections never need
        // a lookup of their own.
        let doh = (!config.dns.servers.is_empty()).then(|| {
            let mut transport = SocketTransport::new(settings.clone(), Arc::clone(&socket_tls));
            if !config.dns.bootstrap.is_empty() {
                transport = transport.with_names(Names::Fixed(config.dns.bootstrap.clone().into()));
            }
            let egress = plan::egress_of(&config.dns.exits, &config.dns.servers[0].origin, None, None);
            let check = TargetCheck { allow_private: true, own: listen };
            Arc::new(Doh::new(config.dns.servers.clone(), transport, egress, check, config.dns.cache_max_ttl))
        });
        if let Some(doh) = doh.as_ref().filter(|_| config.dns.resolve) {
            socket = socket.with_names(Names::Doh(Arc::clone(doh)));
        }
        let resolving = doh.clone().filter(|_| config.dns.resolve);
        let fetch = FetchTransport::new(
            settings,
            &fetch_tls,
            listen,
            Arc::clone(socket.pool()),
            resolving,
            socket.connector().clone(),
        )
        .map_err(|e| ConfigError(format!("building the fetch transport: {e}")))?;
        let transports = Transports::new(socket, fetch, config.aggressive_fallback);
        let (transports, metrics) = (Arc::new(transports), Arc::new(Metrics::new()));
        let ledger = arc_swap::ArcSwapOption::from(usage::open_ledger(&config, &metrics)?.map(Arc::new));
        let config = ArcSwap::from_pointee(config);
        Ok(App { config, token, listen, transports, metrics, ledger, doh })
    }

    /// Commits every settled request to the usage store (at shutdown).
    pub(crate) fn flush_usage(&self) {
        if let Some(ledger) = self.ledger() {
            ledger.store().flush();
        }
    }

    /// The configuration in force now.
    pub(crate) fn snapshot(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The usage ledger, once a client is configured.
    pub(crate) fn ledger(&self) -> Option<Arc<Ledger>> {
        self.ledger.load_full()
    }

    /// Puts `config` in force (a reload, SPEC §13): requests that already
    /// started keep theirs. Opens the usage store when `config` brings the
    /// first clients, and fails — leaving everything as it was — when that
    /// cannot be done.
    pub(crate) fn install(&self, config: Config) -> Result<(), ConfigError> {
        if self.ledger.load().is_none()
            && let Some(ledger) = usage::open_ledger(&config, &self.metrics)?
        {
            self.ledger.store(Some(Arc::new(ledger)));
        }
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// Handles one request; never fails (errors become responses). The
    /// phases, in order: admit the head → route → plan → send (a tunnel,
    /// or a request through the transports) → shape → record.
    pub(crate) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Recorded> {
        // The configuration is loaded once: a reload swaps it, a request in
        // flight keeps its own.
        let config = self.snapshot();
        let mut cx = Ctx::new(&req);
        let mut resp = match self.respond(&config, req, &mut cx).await {
            Ok(resp) => resp,
            Err(e) => e.to_response(),
        };
        if let Some(mut meter) = cx.meter.take() {
            // The request ended without a body to watch (an error, a
            // tunnel's 101): settled now, with the status the client got.
            meter.status = resp.status().as_u16();
            let before = *meter.before();
            meter::figure_headers(resp.headers_mut(), meter.client(), &before, None, config.usage.cost_headers);
        }
        local::apply_cors(resp.headers_mut(), cx.request_origin.as_ref(), &config.cors);
        self.record(resp, cx)
    }

    async fn respond(&self, config: &Config, req: Request<Incoming>, cx: &mut Ctx) -> Result<Response<Body>, Error> {
        self.admit(config, &req)?;
        if req.method() == Method::OPTIONS {
            return Ok(local::preflight(req.headers()));
        }
        let route = self.route(config, &req)?;
        let exit =
            req.headers().get("x-veilgate-exit").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        let settings = plan::Settings { config, token: &self.token, own: self.listen, exit };
        let mut forward = match plan::plan(route, req.uri().path(), settings) {
            Plan::Dashboard => return Ok(local::dashboard(self, config, req.headers())),
            Plan::Health => return Ok(local::health(config)),
            Plan::Metrics => return local::metrics(self, config, req.headers()),
            Plan::Usage => return usage::report(self, config, &req),
            Plan::UsageRequests => return usage::requests(self, config, &req).await,
            Plan::Topology => return local::topology(self, config, req.headers()),
            Plan::DnsRelay => return Box::pin(local::dns_relay(self.doh.as_deref(), req)).await,
            Plan::Models(preset, id) => return local::models(&preset, id.as_deref()),
            Plan::Providers(caller) => return Ok(local::providers(config, &caller)),
            Plan::UnifiedModels(caller) => return Ok(App::unified_models(config, &caller)),
            Plan::Unified(unified) => {
                cx.kind = RouteKind::Preset;
                // Boxed: its plans for every member make it the largest
                // future here, and inline every request would carry it.
                return Box::pin(self.unified(config, req, unified, cx)).await;
            }
            Plan::Forward(forward) => forward,
        };
        cx.kind = forward.kind;
        cx.preset = forward.preset.clone();
        cx.client = forward.client.clone();
        if forward.from_client && tunnel::is_upgrade(req.headers()) {
            cx.meter = usage::open_meter(self, config, &forward, b"")?.map(|(m, _)| m);
            // Boxed, like the DNS relay: rare here, and large.
            return Box::pin(self.tunnel(config, req, forward, cx)).await;
        }
        let public_host = public_host(&req);
        let keys = forward.keys.clone().map(|ring| (ring, forward.preset.clone().unwrap_or_default()));
        let sending = Sending {
            redirect: forward.redirect.take(),
            public_host,
            keys,
            again: forward.again.take(),
            elsewhere: Vec::new(),
        };
        let (upstream, gemini) = self.upstream_request(config, req, forward, cx).await?;
        self.send(config, upstream, sending, gemini, cx, None).await
    }

    /// Phase 1: what is refused before routing — a head over the limit, a
    /// foreign `Host` while listening on loopback.
    fn admit(&self, config: &Config, req: &Request<Incoming>) -> Result<(), Error> {
        let limit = config.limits.max_header_bytes;
        if local::head_size(req) > limit {
            return Err(Error::HeadTooLarge { limit });
        }
        if self.listen.ip().is_loopback() && !local::is_allowed_host(req, &config.allowed_hosts) {
            return Err(Error::ForeignHost);
        }
        Ok(())
    }

    /// Phase 2: the path (and `x-veilgate-token`) → [`Route`].
    fn route(&self, config: &Config, req: &Request<Incoming>) -> Result<Route, Error> {
        let header_token = req.headers().get(crate::auth::TOKEN_HEADER).map(HeaderValue::as_bytes);
        let input = RouteInput {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            header_token,
            headers: RouteHeaders(Some(req.headers())),
        };
        let cx = RouteContext {
            presets: &config.presets,
            token: &self.token,
            preset_auth: config.preset_auth,
            clients: &config.clients,
            dns_relay: config.dns.relay,
        };
        Ok(route(input, cx)?)
    }

    /// Phase 4a: a WebSocket tunnel instead of a request.
    async fn tunnel(
        &self,
        config: &Config,
        req: Request<Incoming>,
        forward: Forward,
        cx: &mut Ctx,
    ) -> Result<Response<Body>, Error> {
        cx.kind = RouteKind::Tunnel;
        cx.transport = Some("socket");
        let mut headers =
            RequestPolicy { websocket: true, ..policy(config, forward.user_agent.as_ref(), forward.keys.is_some()) }
                .request_headers(req.headers());
        if let Some(ring) = &forward.keys {
            let preset = forward.preset.clone().unwrap_or_default();
            let key = ring.pick(Tried::default(), Instant::now()).map_err(|no| no_key(&preset, no))?;
            let credential = ring.credential(key, &forward.origin);
            if let Some((name, value)) = credential.as_ref().and_then(|c| c.header_for(&forward.origin)) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let settings = TunnelSettings {
            max_message_bytes: config.websocket_max_message_bytes,
            idle_timeout: config.upstream.idle_timeout,
            handshake_timeout: config.upstream.response_timeout,
            open_tunnels: self.metrics.open_tunnels(),
        };
        let socket = &self.transports.socket;
        let route = (forward.check, &forward.egress);
        Ok(tunnel::open(req, forward.origin, forward.path, headers, route, socket, settings).await?)
    }

    /// The upstream request of a forward: the policy's headers and the
    /// whole body (`/test` takes nothing of the client's), and whether the
    /// Gemini monitor takes its stream.
    async fn upstream_request(
        &self,
        config: &Config,
        req: Request<Incoming>,
        forward: Forward,
        cx: &mut Ctx,
    ) -> Result<(UpstreamRequest, Option<Watched>), Error> {
        let policy = policy(config, forward.user_agent.as_ref(), forward.keys.is_some());
        if !forward.from_client {
            let Forward { origin, path, check, transport, egress, .. } = forward;
            let headers = policy.request_headers(&HeaderMap::new());
            let (method, body) = (Method::GET, Bytes::new());
            let req =
                UpstreamRequest { method, origin, path, headers, body, check, transport, egress, credential: None };
            return Ok((req, None));
        }
        let (parts, body) = req.into_parts();
        let limits = &config.limits;
        let body = read_body(body, &parts.headers, limits.max_body_bytes, limits.header_read_timeout).await?;
        self.build_upstream(config, &parts.method, &parts.headers, body, forward, cx)
    }

    /// The upstream request of a forward from the client, with its body
    /// read: the policy's headers, the meter opened, the monitor decided.
    fn build_upstream(
        &self,
        config: &Config,
        method: &Method,
        client_headers: &HeaderMap,
        body: Bytes,
        forward: Forward,
        cx: &mut Ctx,
    ) -> Result<(UpstreamRequest, Option<Watched>), Error> {
        let policy = policy(config, forward.user_agent.as_ref(), forward.keys.is_some());
        let headers = policy.request_headers(client_headers);
        let mut body = body;
        if let Some(limits) = &forward.limits {
            let estimate = usage::estimate_tokens(&body);
            let what = || format!("preset {}", forward.preset.as_deref().unwrap_or_default());
            let limited = |limit, wait: Duration| Error::RateLimited {
                what: what(),
                limit,
                retry_after: wait.as_secs_f64().ceil() as u64,
            };
            limits.admit(estimate, Instant::now()).map_err(|(limit, wait)| limited(limit, wait))?;
        }
        if let Some((meter, injected)) = usage::open_meter(self, config, &forward, &body)? {
            if let Some(injected) = injected {
                body = injected;
            }
            cx.meter = Some(meter);
        }
        let Forward { origin, path, check, transport, monitor, egress, continues, protocol, .. } = forward;
        let gemini = if monitor {
            gemini_stream::applies(method, &path, &body)
                .map(|v| Watched::Gemini(v, KeepAlive::for_client(client_headers)))
        } else if let Some(c) = continues {
            // The body as it goes upstream (usage asked for, model rewritten).
            match protocol {
                Some(Protocol::Anthropic) => {
                    crate::monitor::anthropic::applies(method, &path, &body).map(|v| Watched::Anthropic(v, c))
                }
                _ => crate::monitor::openai::applies(method, &path, &body).map(|v| Watched::OpenAi(v, c)),
            }
        } else {
            None
        };
        let method = method.clone();
        let credential = None;
        Ok((UpstreamRequest { method, origin, path, headers, body, check, transport, egress, credential }, gemini))
    }

    /// Phase 4b and 5: sends through the transports (fallback inside),
    /// shapes the response and hands a Gemini stream to its monitor. An
    /// answer got already (an alias member's, with when it was asked for)
    /// is shaped as it is. One function for both, so that the common path
    /// is a single state machine.
    #[allow(clippy::too_many_arguments)] // the phases' state, handed on once
    async fn send(
        &self,
        config: &Config,
        req: UpstreamRequest,
        mut sending: Sending,
        gemini: Option<Watched>,
        cx: &mut Ctx,
        sent: Option<(Result<Served, Failure>, Instant)>,
    ) -> Result<Response<Body>, Error> {
        let mut req = req;
        let (sent, asked) = match sent {
            Some(done) => done,
            // Sent once, without a held key: straight to the transports.
            None if sending.again.is_none() && sending.keys.is_none() => {
                let asked = Instant::now();
                (self.transports.send(&req).await, asked)
            }
            None => {
                let asked = Instant::now();
                (self.send_again(config, &mut req, &mut sending, cx).await?, asked)
            }
        };
        let served = match sent {
            Ok(served) => served,
            Err(failure) => {
                cx.transport = failure.attempts.last().map(|a| a.transport.as_str());
                if let Some(meter) = &mut cx.meter {
                    meter.attempts = meter.attempts.max(failure.attempts.len() as u32);
                }
                return Err(Error::Transports(failure));
            }
        };
        self.metrics.upstream_head(asked.elapsed().as_secs_f64());
        if let Some(reason) = served.fallback {
            self.metrics.fallback(reason);
        }
        let transport = served.transport.as_str();
        cx.transport = Some(transport);
        let (mut parts, body) = served.response.into_parts();
        let back = sending.redirect.as_ref().map(|redirect| RedirectBack {
            redirect,
            target: &req.origin,
            public_host: sending.public_host.as_ref(),
            tls: config.tls.is_some(),
        });
        shape_head(&mut parts.headers, transport, back);
        let watching = gemini.filter(|_| gemini_stream::is_event_stream(parts.status, &parts.headers));
        let body = match watching {
            None => body,
            Some(watched) => {
                // The monitor rewrites the stream: no length can hold.
                parts.headers.remove(header::CONTENT_LENGTH);
                let g = &config.gemini;
                let kind = match &watched {
                    Watched::Gemini(..) => Protocol::Gemini,
                    Watched::OpenAi(..) => Protocol::OpenAi,
                    Watched::Anthropic(..) => Protocol::Anthropic,
                };
                let (original, keepalive, continuing) = match watched {
                    Watched::Gemini(original, keepalive) => {
                        let continuing = Continuing {
                            max_retries: g.max_retries,
                            retry_delay: g.retry_delay,
                            idle_timeout: g.idle_timeout,
                            prefill: false,
                        };
                        (original, keepalive, continuing)
                    }
                    Watched::OpenAi(original, c) | Watched::Anthropic(original, c) => {
                        let k = &config.continuation;
                        let continuing = Continuing {
                            max_retries: k.max_retries,
                            retry_delay: k.retry_delay,
                            idle_timeout: c.idle_timeout.unwrap_or(k.stream_idle_timeout),
                            prefill: c.prefill,
                        };
                        (original, KeepAlive::Comment, continuing)
                    }
                };
                let monitored = Monitored {
                    transports: Arc::clone(&self.transports),
                    request: req,
                    original,
                    gemini: Arc::clone(g),
                    continuing,
                    response_timeout: config.upstream.response_timeout,
                    stats: {
                        let metrics = Arc::clone(&self.metrics);
                        Arc::new(move |outcome| metrics.continuation(outcome))
                    },
                    keepalive,
                    elsewhere: std::mem::take(&mut sending.elsewhere),
                };
                match kind {
                    Protocol::OpenAi => {
                        gemini_stream::spawn(body, monitored, crate::monitor::openai::OpenAiWatch::new())
                    }
                    Protocol::Anthropic => {
                        gemini_stream::spawn(body, monitored, crate::monitor::anthropic::AnthropicWatch::new())
                    }
                    Protocol::Gemini => gemini_stream::spawn_gemini(body, monitored),
                }
            }
        };
        let Some(mut meter) = cx.meter.take() else { return Ok(Response::from_parts(parts, body)) };
        meter.status = parts.status.as_u16();
        meter.attempts += u32::from(served.fallback.is_some());
        if !parts.status.is_success() {
            // Counted as a request without tokens when the response is done.
            cx.meter = Some(meter);
            return Ok(Response::from_parts(parts, body));
        }
        let mode = config.usage.cost_headers;
        if usage::read_whole(&parts.headers) {
            return Ok(usage::answer_whole(parts, body, meter, mode).await);
        }
        let before = *meter.before();
        meter::figure_headers(&mut parts.headers, meter.client(), &before, None, mode);
        let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
        let body = Metered::new(body, meter, content_type.as_ref()).boxed_unsync();
        if body.size_hint().exact().is_none() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Ok(Response::from_parts(parts, body))
    }

    /// Probes the disabled keys of every keyed preset when due (§12): `GET
    /// key_probe_path` on the preset's first target with the key; a 2xx
    /// makes it usable again. Runs until the server stops.
    pub(crate) async fn probe_keys(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let config = self.snapshot();
            for preset in config.presets.iter() {
                let (Some(ring), Some(target)) = (&preset.keys, preset.targets.first()) else { continue };
                for key in ring.due_probes(Instant::now()) {
                    let app = Arc::clone(&self);
                    let (ring, config) = (Arc::clone(ring), Arc::clone(&config));
                    let path = format!("{}{}", target.base_path, ring.probe_path);
                    let origin = target.origin.clone();
                    let target_origin = origin.clone();
                    let exits = Arc::clone(preset.exits.as_ref().unwrap_or(&config.upstream.exits));
                    let route = preset.route.clone();
                    tokio::spawn(async move {
                        let policy = policy(&config, None, true);
                        let req = UpstreamRequest {
                            method: Method::GET,
                            credential: ring.credential(key, &origin),
                            origin,
                            path,
                            headers: policy.request_headers(&HeaderMap::new()),
                            body: Bytes::new(),
                            check: plan::preset_check(app.listen),
                            transport: Preference::SocketFirst,
                            egress: plan::egress_of(&exits, &target_origin, None, None),
                        };
                        let ok = matches!(app.transports.send(&req).await, Ok(s) if s.response.status().is_success());
                        ring.probed(key, ok);
                        tracing::info!(preset = route, key, usable = ok, "provider key probed");
                    });
                }
            }
        }
    }

    /// One attempt: through the transports, with a held key when the
    /// preset has them.
    async fn send_once(
        &self,
        req: &mut UpstreamRequest,
        sending: &Sending,
        cx: &mut Ctx,
    ) -> Result<Result<Served, Failure>, Error> {
        match &sending.keys {
            None => Ok(self.transports.send(req).await),
            Some((ring, preset)) => self.send_keyed(ring, preset, req, cx).await,
        }
    }

    /// Phase 5 on a preset that holds keys (§12): a usable key, round-robin;
    /// a 401/403/429 benches it, and the request goes again at once with
    /// the next usable key while nothing has reached the client (each key
    /// once); once every key was tried, the last answer goes to the client
    /// as it came. No usable key at the start → 429 or 503, nothing sent.
    async fn send_keyed(
        &self,
        ring: &Keyring,
        preset: &str,
        req: &mut UpstreamRequest,
        cx: &mut Ctx,
    ) -> Result<Result<Served, Failure>, Error> {
        let mut tried = Tried::default();
        let mut key = ring.pick(tried, Instant::now()).map_err(|no| no_key(preset, no))?;
        let mut attempts = 0u32;
        loop {
            tried.add(key);
            attempts += 1;
            req.credential = ring.credential(key, &req.origin);
            let sent = self.transports.send(req).await;
            if let Some(meter) = &mut cx.meter {
                meter.attempts = attempts;
            }
            let Ok(served) = &sent else { return Ok(sent) };
            let status = served.response.status().as_u16();
            let verdict = ring.judge(key, status, served.response.headers(), Instant::now());
            if verdict == Verdict::Fine {
                return Ok(sent);
            }
            tracing::info!(
                preset,
                key,
                status,
                "provider key {}",
                if verdict == Verdict::Refused { "disabled" } else { "cooling" }
            );
            match ring.pick(tried, Instant::now()) {
                // Nothing of this answer reached the client: the next key.
                Ok(next) => key = next,
                Err(_) => return Ok(sent),
            }
        }
    }

    /// Phase 6: the access record and metrics, written when the body ends.
    /// The response as hyper sends it: its body counted and logged when it
    /// ends (not boxed again: one allocation less per request).
    fn record(&self, resp: Response<Body>, cx: Ctx) -> Response<Recorded> {
        let access = Access {
            method: cx.method,
            kind: cx.kind,
            preset: cx.preset,
            client: cx.client,
            transport: cx.transport,
            status: resp.status().as_u16(),
            started: cx.started,
        };
        resp.map(|body| Recorded::wrap(body, access, Arc::clone(&self.metrics)))
    }
}

/// The request-header policy of a route; `keyed` for a preset that holds
/// keys.
fn policy<'a>(config: &'a Config, preset_user_agent: Option<&'a UserAgent>, keyed: bool) -> RequestPolicy<'a> {
    RequestPolicy {
        extra_allow: &config.headers.allow,
        user_agent: preset_user_agent.unwrap_or(&config.headers.user_agent),
        websocket: false,
        drop_keys: keyed,
    }
}

/// The refusal of a keyed preset without a usable key: 429 with the
/// soonest end of cooling (whole seconds, rounded up), or 503.
fn no_key(preset: &str, no: NoKey) -> Error {
    match no {
        NoKey::Cooling(d) => {
            let retry_after = (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1);
            Error::KeysCooling { preset: preset.to_owned(), retry_after }
        }
        NoKey::Disabled => Error::KeysDisabled { preset: preset.to_owned() },
    }
}

/// What sending a forward needs besides the upstream request.
struct Sending {
    redirect: Option<Redirect>,
    /// The `Host` the client addressed veilgate by (for redirects).
    public_host: Option<HeaderValue>,
    /// The preset's held keys and its name.
    keys: Option<(Arc<Keyring>, String)>,
    /// Several targets or retries (§13).
    again: Option<plan::Again>,
    /// An alias's next members, for continuing a cut stream (§14).
    elsewhere: Vec<crate::monitor::stream::Elsewhere>,
}

/// A stream a monitor takes, with the request's JSON as it went upstream.
pub(crate) enum Watched {
    /// §5.
    Gemini(serde_json::Value, KeepAlive),
    /// §14, OpenAI chat completions.
    OpenAi(serde_json::Value, plan::Continues),
    /// §14, Anthropic messages.
    Anthropic(serde_json::Value, plan::Continues),
}

/// What the phases of one request learn and the record needs (never its
/// path: it may hold the token, and queries may hold keys).
struct Ctx {
    started: Instant,
    method: Method,
    /// The client's `Origin`, for veilgate's CORS headers.
    request_origin: Option<HeaderValue>,
    kind: RouteKind,
    preset: Option<String>,
    client: Option<Arc<str>>,
    transport: Option<&'static str>,
    /// A client's request: its reservation until it is settled.
    meter: Option<Meter>,
}

impl Ctx {
    fn new(req: &Request<Incoming>) -> Ctx {
        Ctx {
            started: Instant::now(),
            method: req.method().clone(),
            request_origin: req.headers().get(header::ORIGIN).cloned(),
            kind: RouteKind::Local,
            preset: None,
            client: None,
            transport: None,
            meter: None,
        }
    }
}

/// The host the client addressed veilgate by, when it said; turned into
/// `http(s)://<host>` only if a redirect needs rewriting.
fn public_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.headers().get(header::HOST) {
        Some(v) => Some(v.clone()),
        None => HeaderValue::from_str(req.uri().authority()?.as_str()).ok(),
    }
}

/// Reads the request body up to `limit` bytes (413 above it, at once when
/// `content-length` already says so); a body that sends nothing for
/// `quiet` is cut with 408.
async fn read_body(mut body: Incoming, headers: &HeaderMap, limit: u64, quiet: Duration) -> Result<Bytes, Error> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::BodyTooLarge { limit });
    }
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let mut gathered = Gathered::default();
    loop {
        let frame = match tokio::time::timeout(quiet, body.frame()).await {
            Err(_) => return Err(Error::BodyTimeout { ms: quiet.as_millis() as u64 }),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(Error::BodyRead(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        gathered.push(data);
        if gathered.len() > limit {
            return Err(Error::BodyTooLarge { limit });
        }
    }
    Ok(gathered.finish())
}

/// The raw bytes of the 503 sent to a connection over `max_connections`
/// (written before any HTTP parsing, then the connection is closed).
pub(crate) fn over_capacity_response() -> Vec<u8> {
    Error::TooManyConnections.to_raw_response()
}
