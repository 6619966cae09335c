//! The request handler: checks the `Host`, answers preflights and local
//! endpoints, routes, applies the header policy, sends the request through
//! a transport, and shapes the response for the client (policy-filtered
//! headers, CORS, `x-veilgate-transport`). One log line per request.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use crate::body::{Body, empty, full};
use crate::config::{Config, ConfigError, Cors, GeminiConfig, Monitor, Token};
use crate::dashboard;
use crate::error::Error;
use crate::metrics::{Access, Metrics, Recorded};
use crate::monitor::gemini::KeepAlive;
use crate::monitor::stream::{self as gemini_stream, Monitored};
use crate::policy::headers::{RequestPolicy, filter_response_headers};
use crate::policy::redirect::{RouteBase, rewrite_location};
use crate::policy::target::Origin;
use crate::route::{Route, RouteContext, RouteInput, route, upstream_path};
use crate::tunnel::{self, TunnelSettings};
use crate::upstream::choose::Transports;
use crate::upstream::connect::TargetCheck;
use crate::upstream::fetch::{FetchSettings, FetchTransport};
use crate::upstream::{SocketSettings, SocketTransport, UpstreamRequest, tls};

/// Everything a request handler needs, shared by all connections.
pub(crate) struct App {
    pub config: Config,
    pub token: Token,
    /// The address actually bound (refused as an upstream target).
    pub listen: SocketAddr,
    pub transports: Arc<Transports>,
    gemini: Arc<GeminiConfig>,
    pub metrics: Arc<Metrics>,
}

/// What the log line says about a request (never its path: it may hold the
/// token, and queries may hold keys).
struct LogInfo {
    kind: &'static str,
    preset: Option<String>,
    transport: Option<&'static str>,
}

impl App {
    /// Builds both transports; must run inside a Tokio runtime.
    pub(crate) fn new(config: Config, token: Token, listen: SocketAddr) -> Result<App, ConfigError> {
        let u = &config.upstream;
        let roots = tls::root_store(u.extra_ca_file.as_deref())?;
        let socket_tls = tls::client_config(roots.clone(), &[b"http/1.1"])?;
        let fetch_tls = tls::client_config(roots, &[b"h2", b"http/1.1"])?;
        let socket = SocketTransport::new(
            SocketSettings {
                connect_timeout: u.connect_timeout,
                response_timeout: u.response_timeout,
                idle_timeout: u.idle_timeout,
                pool_idle_timeout: u.pool_idle_timeout,
                max_response_head_bytes: config.limits.max_response_head_bytes,
                max_connections: config.limits.max_upstream_connections,
            },
            socket_tls,
        );
        let fetch = FetchTransport::new(
            FetchSettings {
                connect_timeout: u.connect_timeout,
                response_timeout: u.response_timeout,
                idle_timeout: u.idle_timeout,
                pool_idle_timeout: u.pool_idle_timeout,
                max_response_head_bytes: config.limits.max_response_head_bytes,
            },
            &fetch_tls,
            listen,
            Arc::clone(socket.pool()),
        )
        .map_err(|e| ConfigError(format!("building the fetch transport: {e}")))?;
        let transports = Transports::new(socket, fetch, config.aggressive_fallback, config.force_fetch_default);
        let gemini = Arc::new(config.gemini.clone());
        Ok(App { config, token, listen, transports: Arc::new(transports), gemini, metrics: Arc::new(Metrics::new()) })
    }

    /// Handles one request; never fails (errors become responses).
    pub(crate) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let request_origin = req.headers().get(header::ORIGIN).cloned();
        let mut info = LogInfo { kind: "local", preset: None, transport: None };
        let mut resp = match self.dispatch(req, &mut info).await {
            Ok(resp) => resp,
            Err(e) => e.to_response(),
        };
        apply_cors(resp.headers_mut(), request_origin.as_ref(), &self.config.cors);
        let access = Access {
            method,
            kind: info.kind,
            preset: info.preset,
            transport: info.transport,
            status: resp.status().as_u16(),
            started,
        };
        resp.map(|body| Recorded::wrap(body, access, Arc::clone(&self.metrics)).boxed_unsync())
    }

    async fn dispatch(&self, req: Request<Incoming>, info: &mut LogInfo) -> Result<Response<Body>, Error> {
        let limit = self.config.limits.max_header_bytes;
        if head_size(&req) > limit {
            return Err(Error::HeadTooLarge { limit });
        }
        if self.listen.ip().is_loopback() && !self.is_allowed_host(&req) {
            return Err(Error::ForeignHost);
        }
        if req.method() == Method::OPTIONS {
            return Ok(preflight(req.headers()));
        }
        let header_token = req.headers().get("x-veilgate-token").map(HeaderValue::as_bytes);
        let input = RouteInput { method: req.method(), path: req.uri().path(), query: req.uri().query(), header_token };
        let cx =
            RouteContext { presets: &self.config.presets, token: &self.token, preset_auth: self.config.preset_auth };
        let route = route(input, cx).map_err(Error::from)?;

        let public = Self::public_host(&req);
        let route_path = req.uri().path().to_owned();
        let (origin, path, user_agent, check, force_fetch, redirect, monitored) = match route {
            Route::Dashboard => return Ok(self.dashboard(req.headers())),
            Route::Health => return Ok(health()),
            Route::Metrics => return self.metrics(req.headers()),
            Route::Test => {
                info.kind = "test";
                let (origin, path) = self.config.default_dst.clone();
                let req = UpstreamRequest {
                    method: Method::GET,
                    origin,
                    path,
                    headers: self.policy(None).request_headers(&HeaderMap::new()),
                    body: Bytes::new(),
                    check: self.check(true),
                };
                return self.send(req, false, None, None, info).await;
            }
            Route::Preset { preset, remainder, query, .. } => {
                info.kind = "preset";
                info.preset = Some(preset.route.clone());
                let target = preset.pick_target();
                let path = upstream_path(&target.base_path, &remainder, query.as_deref());
                let prefix = route_path[..route_path.len() - remainder.len()].to_owned();
                let redirect = Redirect::Preset { base_path: target.base_path.clone(), prefix };
                let monitored = preset.monitor == Monitor::Gemini && self.gemini.enabled;
                (
                    target.origin.clone(),
                    path,
                    preset.user_agent.clone(),
                    self.check(true),
                    preset.force_fetch,
                    redirect,
                    monitored,
                )
            }
            Route::Generic { origin, remainder, query, path_token } => {
                info.kind = "generic";
                let path = upstream_path("", &remainder, query.as_deref());
                let auth_prefix = if path_token { format!("/{}", self.token.expose()) } else { String::new() };
                let check = self.check(self.config.upstream.allow_private_targets);
                (origin, path, None, check, false, Redirect::Generic { auth_prefix }, false)
            }
        };

        if tunnel::is_upgrade(req.headers()) {
            info.kind = "tunnel";
            info.transport = Some("socket");
            let headers =
                RequestPolicy { websocket: true, ..self.policy(user_agent.as_ref()) }.request_headers(req.headers());
            let settings = TunnelSettings {
                max_message_bytes: self.config.websocket_max_message_bytes,
                idle_timeout: self.config.upstream.idle_timeout,
                handshake_timeout: self.config.upstream.response_timeout,
                open_tunnels: self.metrics.open_tunnels(),
            };
            let socket = &self.transports.socket;
            return tunnel::open(req, origin, path, headers, check, socket, settings).await.map_err(Error::from);
        }

        let (parts, body) = req.into_parts();
        let headers = self.policy(user_agent.as_ref()).request_headers(&parts.headers);
        let limits = &self.config.limits;
        let body = read_body(body, &parts.headers, limits.max_body_bytes, limits.header_read_timeout).await?;
        let gemini = if monitored {
            gemini_stream::applies(&parts.method, &path, &body).map(|v| (v, KeepAlive::for_client(&parts.headers)))
        } else {
            None
        };
        let req = UpstreamRequest { method: parts.method, origin, path, headers, body, check };
        self.send(req, force_fetch, Some((redirect, public)), gemini, info).await
    }

    async fn send(
        &self,
        req: UpstreamRequest,
        force_fetch: bool,
        redirect: Option<(Redirect, Option<HeaderValue>)>,
        gemini: Option<(serde_json::Value, KeepAlive)>,
        info: &mut LogInfo,
    ) -> Result<Response<Body>, Error> {
        let asked = Instant::now();
        match self.transports.send(&req, force_fetch).await {
            Ok(served) => {
                self.metrics.upstream_head(asked.elapsed().as_secs_f64());
                if let Some(reason) = served.fallback {
                    self.metrics.fallback(reason);
                }
                info.transport = Some(served.transport.as_str());
                let (mut parts, body) = served.response.into_parts();
                filter_response_headers(&mut parts.headers);
                if let Some((redirect, public)) = &redirect
                    && REDIRECT_HEADERS.iter().any(|name| parts.headers.contains_key(*name))
                {
                    let public = self.public_base(public.as_ref());
                    rewrite_redirects(&mut parts.headers, redirect.base(&req.origin), public.as_deref());
                }
                parts.headers.insert("x-veilgate-transport", HeaderValue::from_static(served.transport.as_str()));
                let body = match gemini {
                    Some((original, keepalive)) if gemini_stream::is_event_stream(parts.status, &parts.headers) => {
                        // The monitor rewrites the stream: no length can hold.
                        parts.headers.remove(header::CONTENT_LENGTH);
                        let monitored = Monitored {
                            transports: Arc::clone(&self.transports),
                            request: req,
                            original,
                            force_fetch,
                            gemini: Arc::clone(&self.gemini),
                            response_timeout: self.config.upstream.response_timeout,
                            stats: {
                                let metrics = Arc::clone(&self.metrics);
                                Arc::new(move |outcome| metrics.continuation(outcome))
                            },
                            keepalive,
                        };
                        gemini_stream::spawn(body, monitored)
                    }
                    _ => body,
                };
                Ok(Response::from_parts(parts, body))
            }
            Err(failure) => {
                info.transport = failure.attempts.last().map(|a| a.transport.as_str());
                Err(Error::Transports(failure))
            }
        }
    }

    /// The host the client addressed veilgate by, when it said; turned
    /// into `http(s)://<host>` only if a redirect needs rewriting.
    fn public_host(req: &Request<Incoming>) -> Option<HeaderValue> {
        match req.headers().get(header::HOST) {
            Some(v) => Some(v.clone()),
            None => HeaderValue::from_str(req.uri().authority()?.as_str()).ok(),
        }
    }

    fn public_base(&self, host: Option<&HeaderValue>) -> Option<String> {
        let host = host?.to_str().ok()?;
        let scheme = if self.config.tls.is_some() { "https" } else { "http" };
        Some(format!("{scheme}://{host}"))
    }

    fn policy<'a>(&'a self, preset_user_agent: Option<&'a crate::policy::headers::UserAgent>) -> RequestPolicy<'a> {
        RequestPolicy {
            extra_allow: &self.config.headers.allow,
            user_agent: preset_user_agent.unwrap_or(&self.config.headers.user_agent),
            websocket: false,
        }
    }

    fn check(&self, allow_private: bool) -> TargetCheck {
        TargetCheck { allow_private, own: self.listen }
    }

    /// While listening on loopback only loopback names (or `allowed_hosts`)
    /// may appear in `Host`: a web page that rebinds its own name to
    /// 127.0.0.1 must not reach veilgate.
    fn is_allowed_host(&self, req: &Request<Incoming>) -> bool {
        let value = match req.headers().get(header::HOST) {
            Some(v) => v.to_str().ok(),
            None => match req.uri().authority() {
                Some(a) => Some(a.as_str()),
                None => return true, // HTTP/1.0 without Host: not a browser
            },
        };
        let Some(value) = value else { return false };
        is_loopback_host(value, &self.config.allowed_hosts)
    }

    fn dashboard(&self, headers: &HeaderMap) -> Response<Body> {
        let challenged = self.transports.challenged_origins();
        let page = dashboard::render(&self.config.presets, self.config.force_fetch_default, &challenged);
        let etag = HeaderValue::from_str(&page.etag).unwrap_or(HeaderValue::from_static("\"0\""));
        let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes());
        let mut resp = if fresh {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            Response::new(full(page.html))
        };
        let h = resp.headers_mut();
        h.insert(header::ETAG, etag);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'",
            ),
        );
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        resp
    }

    fn metrics(&self, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        let presented =
            headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).unwrap_or_default();
        if !self.token.matches(presented) {
            return Err(Error::Route(crate::route::RouteError::Unauthorized));
        }
        let mut resp = Response::new(full(self.metrics.render(self.transports.socket.pool().idle_count())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        Ok(resp)
    }
}

/// How a response's redirects map back onto the route that asked.
enum Redirect {
    Preset { base_path: String, prefix: String },
    Generic { auth_prefix: String },
}

impl Redirect {
    fn base<'a>(&'a self, target: &'a Origin) -> RouteBase<'a> {
        match self {
            Redirect::Preset { base_path, prefix } => RouteBase::Preset { target, base_path, prefix },
            Redirect::Generic { auth_prefix } => RouteBase::Generic { target, auth_prefix },
        }
    }
}

/// Response headers that may point at the upstream and are rewritten.
const REDIRECT_HEADERS: [&str; 2] = ["location", "x-goog-upload-url"];

/// Points `location` and `x-goog-upload-url` back through veilgate.
fn rewrite_redirects(headers: &mut HeaderMap, base: RouteBase<'_>, public: Option<&str>) {
    for name in REDIRECT_HEADERS {
        let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(new) = rewrite_location(value, base, public)
            && let Ok(v) = HeaderValue::from_str(&new)
        {
            headers.insert(name, v);
        }
    }
}

fn health() -> Response<Body> {
    let body = json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }).to_string();
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `OPTIONS` is answered here, never forwarded.
fn preflight(headers: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"));
    let allow_headers =
        headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned().unwrap_or(HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}

/// veilgate's own CORS headers (upstream ones were dropped by the policy).
fn apply_cors(headers: &mut HeaderMap, request_origin: Option<&HeaderValue>, cors: &Cors) {
    match cors {
        Cors::Any => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("*"));
        }
        Cors::List { loopback, origins } => {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
            if let Some(origin) = request_origin
                && (origins.iter().any(|o| o.as_bytes() == origin.as_bytes())
                    || (*loopback && is_loopback_origin(origin.as_bytes())))
            {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("*"));
            }
        }
    }
}

/// The size of the request head as it was sent over HTTP/1.1: request
/// line and `name: value\r\n` per header.
fn head_size(req: &Request<Incoming>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers().iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4) + 2
}

/// True for `localhost`, `*.localhost`, `127.0.0.0/8`, `[::1]` (any port) or
/// an `allowed_hosts` entry (with or without the port) — and only when the
/// value is exactly an authority (see [`split_authority`]).
fn is_loopback_host(value: &str, allowed: &[String]) -> bool {
    let value = value.to_ascii_lowercase();
    let Some((host, _port)) = split_authority(&value) else { return false };
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || host == "[::1]"
        || allowed.iter().any(|a| a == host || *a == value)
}

/// True for an `Origin` of a page served from this machine:
/// `http(s)://` and a loopback authority (see [`is_loopback_host`]).
fn is_loopback_origin(origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else { return false };
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|authority| is_loopback_host(authority, &[]))
}

/// Splits a `Host` value into host and port when it is exactly an
/// authority: a DNS name (letters, digits, `-`, `_`, `.`), a dotted-quad
/// IPv4 or a bracketed IPv6 literal, then optionally `:` and a port of
/// 1–65535 — nothing else (`[::1]evil.example` is not one).
fn split_authority(value: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = if value.starts_with('[') {
        let end = value.find(']')? + 1;
        value[1..end - 1].parse::<Ipv6Addr>().ok()?;
        value.split_at(end)
    } else {
        match value.find(':') {
            Some(i) => value.split_at(i),
            None => (value, ""),
        }
    };
    let port = match rest {
        "" => None,
        _ => {
            let digits = rest.strip_prefix(':')?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
    };
    let is_name =
        |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !host.starts_with('[') && !is_name(host) {
        return None;
    }
    Some((host, port))
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
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(quiet, body.frame()).await {
            Err(_) => return Err(Error::BodyTimeout { ms: quiet.as_millis() as u64 }),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(Error::BodyRead(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        len += data.len() as u64;
        if len > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        // One chunk (the usual case for a small JSON body) is kept as is.
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(f) => {
                rest.reserve(f.len() + data.len());
                rest.extend_from_slice(&f);
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// The raw bytes of the 503 sent to a connection over `max_connections`
/// (written before any HTTP parsing, then the connection is closed).
pub(crate) fn over_capacity_response() -> Vec<u8> {
    Error::TooManyConnections.to_raw_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins() {
        for ok in ["http://localhost:3000", "https://127.0.0.1", "http://[::1]:8080", "http://chat.localhost"] {
            assert!(is_loopback_origin(ok.as_bytes()), "{ok}");
        }
        for bad in ["null", "https://evil.example", "http://localhost.evil.example", "file://", "localhost:3000"] {
            assert!(!is_loopback_origin(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts() {
        let allowed = vec!["proxy.lan".to_owned(), "box:9000".to_owned()];
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
            "app.localhost:1",
            "proxy.lan:8080",
            "box:9000",
        ] {
            assert!(is_loopback_host(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::2]:8080",
            "box:9001",
            "10.0.0.1",
            "",
            "[::1]evil.example",
            "[::1]:8080evil",
            "[::1]:",
            "[::1",
            "localhost:",
            "localhost:8080:8080",
            "localhost:99999",
            "localhost:0",
            "local host",
            "localhost/x",
            "127.0.0.1@evil.example",
        ] {
            assert!(!is_loopback_host(bad, &allowed), "{bad}");
        }
    }
}
