//! Request path → [`Route`]: the routing rules of the spec's §2, as a pure
//! function of the method, the raw path and query, the `x-veilgate-token`
//! header and the configuration. No IO; the server acts on the result.
//!
//! Empty segments are skipped only while reading the token, the preset name,
//! the scheme and the host; the rest of the path (the *remainder*) is kept
//! byte for byte, so `%2F`, `%0d%0a`, `//` and trailing slashes reach the
//! upstream exactly as the client wrote them.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use crate::auth::{Caller, Identified, Presented, Token, holder, identify, is_token_shaped};
use crate::client::Clients;
use crate::policy::target::{HostError, Origin, Scheme, parse_authority};
use crate::preset::{Preset, Presets};

/// What a request asks for.
#[derive(Debug)]
pub enum Route {
    /// `GET /`
    Dashboard,
    /// `GET /healthz`
    Health,
    /// `GET /metrics` (bearer token checked by the handler)
    Metrics,
    /// `GET /test`
    Test,
    /// `GET /usage` (the caller is checked by the handler)
    Usage,
    /// `GET /usage/requests`
    UsageRequests,
    /// `GET /internal/v1/topology` (the admin token is checked by the handler)
    Topology,
    /// `/<token>/dns-query`: the DoH relay (§10), for callers allowed
    /// generic routes.
    DnsRelay,
    /// `/<name>/<remainder>` with an enabled preset.
    Preset { preset: Arc<Preset>, remainder: String, query: Option<String>, caller: Caller },
    /// `GET /<preset>/v1/models[/<id>]` of a preset that declares models:
    /// answered by veilgate (§12).
    Models { preset: Arc<Preset>, id: Option<String> },
    /// `GET /v1/providers`: the keyed presets the caller may use (§12).
    Providers { caller: Caller },
    /// The unified endpoint (§13): `POST /v1/chat/completions`,
    /// `/v1/completions`, `/v1/embeddings`, `/v1/responses`; `endpoint` is
    /// the path after `/v1`. `key_slot_token`: the caller's token came in
    /// the API-key slot, so only members holding keys may serve it.
    Unified { endpoint: String, query: Option<String>, caller: Caller, key_slot_token: bool },
    /// `GET /v1/models` of the unified endpoint: aliases and declared models.
    UnifiedModels { caller: Caller },
    /// `/<token>/<scheme>/<host>/<remainder>`
    /// `path_token`: the token came in the path (not in `x-veilgate-token`).
    /// `exit`: the numeric route's `N` (`/<token>/<N>/<base64url>/…`).
    Generic {
        origin: Origin,
        remainder: String,
        query: Option<String>,
        path_token: bool,
        caller: Caller,
        exit: Option<u64>,
    },
}

/// Why a request was refused before it could reach any upstream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the path holds only the token; add a preset name or /<scheme>/<host>/<path>")]
    TokenOnly,
    #[error("unknown scheme: expected http, https, ws or wss after the token")]
    UnknownScheme,
    /// The numeric route (`/<token>/<N>/<base64url>/…`) is not usable.
    #[error("numeric route /<token>/<N>/<base64url>/…: {0}")]
    BadNumericRoute(&'static str),
    #[error("missing host after the scheme")]
    MissingHost,
    #[error("invalid host: {0}")]
    BadHost(HostError),
    #[error("the path contains raw spaces or control characters; percent-encode them")]
    BadPath,
    #[error("missing or wrong token")]
    Unauthorized,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// A client's `presets` list leaves this one out.
    #[error("this client may not use the preset \"{preset}\"")]
    PresetNotAllowed { preset: String },
    /// A client without `generic = true` asked for a generic route.
    #[error("this client may not use generic routes")]
    GenericNotAllowed,
    /// The first segment is neither a token nor an enabled preset.
    #[error("no preset named \"{name}\"{}", hint(suggestion.as_deref()))]
    NoPreset { name: String, suggestion: Option<String> },
}

fn hint(suggestion: Option<&str>) -> String {
    match suggestion {
        Some("v1") => "; a route starts with a preset, e.g. /openai/v1/…".to_owned(),
        Some(name) => format!("; did you mean /{name}?"),
        None => String::new(),
    }
}

impl RouteError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            RouteError::Unauthorized => S::UNAUTHORIZED,
            RouteError::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            RouteError::NoPreset { .. } => S::NOT_FOUND,
            RouteError::PresetNotAllowed { .. } | RouteError::GenericNotAllowed => S::FORBIDDEN,
            _ => S::BAD_REQUEST,
        }
    }
}

/// Providers known by another name than their preset's.
const OTHER_NAMES: &[(&str, &str)] =
    &[("anthropic", "claude"), ("google", "gemini"), ("x", "xai"), ("grok", "xai"), ("chatgpt", "openai")];

/// The longest segment quoted back in a 404.
const MAX_QUOTED: usize = 64;

/// The 404 for a first segment that names nothing (SPEC §2, step 10).
fn no_preset(name: &str, presets: &Presets) -> RouteError {
    let lower = name.to_ascii_lowercase();
    let known = |p: &str| presets.enabled(p).map(|p| p.route.clone());
    let suggestion = if lower == "v1" {
        Some("v1".to_owned())
    } else {
        OTHER_NAMES.iter().find(|(other, _)| *other == lower).and_then(|(_, preset)| known(preset)).or_else(|| {
            presets
                .iter()
                .filter(|p| p.enabled)
                .map(|p| (edit_distance(&lower, &p.route), &p.route))
                .filter(|(d, _)| *d <= 2)
                .min_by_key(|(d, _)| *d)
                .map(|(_, route)| route.clone())
        })
    };
    let mut quoted: String = name.chars().take(MAX_QUOTED).collect();
    if quoted.len() < name.len() {
        quoted.push('…');
    }
    RouteError::NoPreset { name: quoted, suggestion }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The parts of a request that routing reads.
#[derive(Clone, Copy, Debug)]
pub struct RouteInput<'a> {
    pub method: &'a Method,
    /// The path exactly as received (no decoding).
    pub path: &'a str,
    /// The query, `Some("")` when the client sent a bare `?`.
    pub query: Option<&'a str>,
    /// The `x-veilgate-token` header, if any.
    pub header_token: Option<&'a [u8]>,
    /// The request's headers, for what routing reads besides the token:
    /// the API-key slot of presets that hold keys (§9), `x-host-final`.
    pub headers: RouteHeaders<'a>,
}

/// The request's headers, looked up only where a rule needs one.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteHeaders<'a>(pub Option<&'a HeaderMap>);

impl<'a> RouteHeaders<'a> {
    fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.0.and_then(|h| h.get(name)).map(HeaderValue::as_bytes)
    }

    /// The token of `authorization: Bearer …`.
    fn bearer(&self) -> Option<&'a [u8]> {
        self.get("authorization").and_then(|v| v.strip_prefix(b"Bearer "))
    }

    /// The API-key slot: `authorization: Bearer …`, `x-api-key`,
    /// `x-goog-api-key`, then the query's `key=` — the first present.
    fn key_slot(&self, query: Option<&'a str>) -> Option<&'a [u8]> {
        let key_param = || query?.split('&').find_map(|p| p.strip_prefix("key=")).map(str::as_bytes);
        self.bearer().or_else(|| self.get("x-api-key")).or_else(|| self.get("x-goog-api-key")).or_else(key_param)
    }
}

/// The configuration that routing reads.
#[derive(Clone, Copy, Debug)]
pub struct RouteContext<'a> {
    pub presets: &'a Presets,
    pub token: &'a Token,
    pub preset_auth: bool,
    pub clients: &'a Clients,
    /// `[dns] relay = true`: `/<token>/dns-query` is the relay.
    pub dns_relay: bool,
}

/// Routes one request.
pub fn route(input: RouteInput<'_>, cx: RouteContext<'_>) -> Result<Route, RouteError> {
    let raw_bad = |s: &str| s.bytes().any(|b| b <= b' ' || b == 0x7f);
    if raw_bad(input.path) || input.query.is_some_and(raw_bad) {
        return Err(RouteError::BadPath);
    }

    let local = match input.path {
        "/" => Some(Route::Dashboard),
        "/healthz" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        "/test" => Some(Route::Test),
        "/usage" => Some(Route::Usage),
        "/usage/requests" => Some(Route::UsageRequests),
        "/internal/v1/topology" => Some(Route::Topology),
        _ => None,
    };
    if let Some(local) = local {
        if input.method == Method::GET || input.method == Method::HEAD {
            return Ok(local);
        }
        if !matches!(local, Route::Dashboard) {
            return Err(RouteError::MethodNotAllowed);
        }
    }

    let Identified { mut caller, presented, rest } = identify(input.path, input.header_token, cx.token, cx.clients);
    let path_token = presented == Presented::Path;
    let query = input.query.map(str::to_owned);

    let Some((name, after_name)) = segment(rest) else {
        return Err(if caller.is_anonymous() { RouteError::Unauthorized } else { RouteError::TokenOnly });
    };
    // A token that was sent but is nobody's is 401, whatever the route (§9).
    if presented != Presented::Nothing && caller.is_anonymous() {
        return Err(RouteError::Unauthorized);
    }

    if rest == "/dns-query" && cx.dns_relay {
        return match &caller {
            Caller::Anonymous => Err(RouteError::Unauthorized),
            known if known.may_use_generic() => Ok(Route::DnsRelay),
            _ => Err(RouteError::GenericNotAllowed),
        };
    }
    if rest == "/v1/providers" && (input.method == Method::GET || input.method == Method::HEAD) {
        if presented == Presented::Nothing
            && let Some(bearer) = input.headers.bearer()
        {
            caller = holder(bearer, cx.token, cx.clients).ok_or(RouteError::Unauthorized)?;
        }
        if caller.is_anonymous() {
            return Err(RouteError::Unauthorized);
        }
        return Ok(Route::Providers { caller });
    }
    if name == "v1" && input.headers.get("x-host-final").is_none() {
        let read = input.method == Method::GET || input.method == Method::HEAD;
        let unified = matches!(after_name, "/chat/completions" | "/completions" | "/embeddings" | "/responses");
        if (read && after_name == "/models") || (unified && input.method == Method::POST) {
            // A veilgate token in the API-key slot names the caller (and is
            // never forwarded); any other value there is a provider's key.
            let mut key_slot_token = false;
            if presented == Presented::Nothing
                && let Some(value) = input.headers.key_slot(input.query)
                && let Some(holder) = holder(value, cx.token, cx.clients)
            {
                (caller, key_slot_token) = (holder, true);
            }
            if caller.is_anonymous() && (cx.preset_auth || !cx.clients.is_empty()) {
                return Err(RouteError::Unauthorized);
            }
            if read {
                return Ok(Route::UnifiedModels { caller });
            }
            return Ok(Route::Unified { endpoint: after_name.to_owned(), query, caller, key_slot_token });
        }
    }
    // The seed's legacy routing: `/v1/…` with `x-host-final: host[:port]`
    // goes to the preset whose target that is.
    let by_host =
        if name == "v1" { input.headers.get("x-host-final").and_then(|h| preset_by_host(h, cx.presets)) } else { None };
    let (preset, after_name) = match by_host {
        Some(p) => (Some(p), rest),
        None => (cx.presets.enabled(name), after_name),
    };

    if let Some(preset) = preset {
        // A preset that holds keys takes the caller's token from the API-key
        // slot too (never forwarded there): an SDK needs only its api_key.
        if preset.keys.is_some()
            && presented == Presented::Nothing
            && let Some(value) = input.headers.key_slot(input.query)
        {
            caller = holder(value, cx.token, cx.clients).ok_or(RouteError::Unauthorized)?;
        }
        // Anonymous callers may use presets only while nobody has to show a
        // token: no preset_auth, no clients, no keys held.
        let allowed = match &caller {
            Caller::Anonymous => !cx.preset_auth && cx.clients.is_empty() && preset.keys.is_none(),
            known => known.may_use_preset(&preset.route),
        };
        if !allowed {
            return Err(if caller.is_anonymous() {
                RouteError::Unauthorized
            } else {
                RouteError::PresetNotAllowed { preset: preset.route.clone() }
            });
        }
        let read = input.method == Method::GET || input.method == Method::HEAD;
        if read && !preset.models.is_empty() {
            if after_name == "/v1/models" {
                return Ok(Route::Models { preset: Arc::clone(preset), id: None });
            }
            if let Some(id) = after_name.strip_prefix("/v1/models/").filter(|id| !id.is_empty()) {
                return Ok(Route::Models { preset: Arc::clone(preset), id: Some(percent_decoded(id)) });
            }
        }
        return Ok(Route::Preset { preset: Arc::clone(preset), remainder: after_name.to_owned(), query, caller });
    }
    if let Caller::Client(client) = &caller
        && !client.generic
    {
        if Scheme::from_segment(name).is_some() || name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RouteError::GenericNotAllowed);
        }
        return Err(no_preset(name, cx.presets));
    }
    if caller.is_anonymous() {
        // A scheme asks for generic mode, which needs the token: 401 says
        // so better than "no preset named https".
        let sent_token = presented != Presented::Nothing;
        // Anything shaped like a credential (a token, a JWT) is never quoted back.
        let credential = is_token_shaped(name) || crate::jwt::is_jwt_shaped(name);
        if sent_token || credential || Scheme::from_segment(name).is_some() {
            return Err(RouteError::Unauthorized);
        }
        return Err(no_preset(name, cx.presets));
    }

    if name.bytes().all(|b| b.is_ascii_digit()) {
        let (origin, remainder, exit) = numeric(name, after_name)?;
        return Ok(Route::Generic { origin, remainder, query, path_token, caller, exit: Some(exit) });
    }
    let scheme = Scheme::from_segment(name).ok_or(RouteError::UnknownScheme)?;
    let (authority, remainder) = segment(after_name).ok_or(RouteError::MissingHost)?;
    let (host, port) = parse_authority(authority).map_err(RouteError::BadHost)?;
    let origin = Origin { scheme, port: port.unwrap_or(scheme.default_port()), host };
    Ok(Route::Generic { origin, remainder: remainder.to_owned(), query, path_token, caller, exit: None })
}

/// The seed api-llm-cloud's numeric route: `N` picks the exit, the next
/// segment is a base URL in base64url (padding optional), and the rest of
/// the path is appended to it with one `/` between them.
fn numeric(n: &str, after: &str) -> Result<(Origin, String, u64), RouteError> {
    use base64::Engine;
    let exit: u64 = n.parse().map_err(|_| RouteError::BadNumericRoute("the exit number is too large"))?;
    let (encoded, extra) = segment(after).ok_or(RouteError::BadNumericRoute("the base URL is missing"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| RouteError::BadNumericRoute("the base URL is not base64url"))?;
    let url = String::from_utf8(bytes).map_err(|_| RouteError::BadNumericRoute("the base URL is not text"))?;
    if url.contains(['?', '#']) {
        return Err(RouteError::BadNumericRoute("the base URL may not have a query or fragment"));
    }
    let (scheme, rest) = url.split_once("://").ok_or(RouteError::BadNumericRoute("the base URL is not absolute"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return Err(RouteError::BadNumericRoute("the base URL is not http(s) or ws(s)")),
    };
    let (origin, base) = crate::policy::target::parse_url(&format!("{scheme}://{rest}")).map_err(|_| {
        RouteError::BadNumericRoute("the base URL's host is not a DNS name, IPv4 or [IPv6] (with a port)")
    })?;
    let remainder = match extra.strip_prefix('/').filter(|e| !e.is_empty()) {
        Some(extra) => format!("{}/{extra}", base.strip_suffix('/').unwrap_or(&base)),
        None => base,
    };
    Ok((origin, remainder, exit))
}

/// The enabled preset one of whose targets is `host[:port]` (the port, when
/// given, must match too).
fn preset_by_host<'p>(value: &[u8], presets: &'p Presets) -> Option<&'p Arc<Preset>> {
    let value = std::str::from_utf8(value).ok()?.trim().to_ascii_lowercase();
    let (host, port) = parse_authority(&value).ok()?;
    presets
        .iter()
        .filter(|p| p.enabled)
        .find(|p| p.targets.iter().any(|t| t.origin.host == host && port.is_none_or(|port| t.origin.port == port)))
}

/// `%XX` escapes decoded (a model id such as `meta-llama%2Fllama-3`); bytes
/// that do not form UTF-8 are replaced.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits off the next non-empty segment: `"//a/b"` → `("a", "/b")`.
pub(crate) fn segment(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches('/');
    if s.is_empty() {
        return None;
    }
    // A byte loop: segments are short, and `str::find`'s searcher costs
    // more to set up than the scan.
    let end = s.bytes().position(|b| b == b'/').unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// `prefix` + `remainder` (or `/`), plus `?query` when the client sent one.
pub fn upstream_path(prefix: &str, remainder: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(prefix.len() + remainder.len() + query.map_or(0, |q| q.len() + 1) + 1);
    out.push_str(prefix);
    out.push_str(remainder);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RawConfig};
    use crate::policy::target::Host;

    const TOKEN: &str = "tok_0123456789abcdef";

    fn config(toml: &str) -> Config {
        Config::from_raw(RawConfig::from_toml(toml).unwrap(), &|_| None).unwrap()
    }

    fn run(c: &Config, method: Method, target: &str, header: Option<&str>) -> Result<Route, RouteError> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let token = Token::parse(TOKEN, "t").unwrap();
        route(
            RouteInput {
                method: &method,
                path,
                query,
                header_token: header.map(str::as_bytes),
                headers: RouteHeaders(None),
            },
            RouteContext {
                presets: &c.presets,
                token: &token,
                preset_auth: c.preset_auth,
                clients: &c.clients,
                dns_relay: false,
            },
        )
    }

    /// Upstream URL of a proxied route, or the error.
    fn dest(c: &Config, target: &str, header: Option<&str>) -> Result<String, RouteError> {
        Ok(match run(c, Method::POST, target, header)? {
            Route::Preset { preset, remainder, query, .. } => {
                let t = &preset.targets[0];
                format!("{}{}", t.origin, upstream_path(&t.base_path, &remainder, query.as_deref()))
            }
            Route::Generic { origin, remainder, query, .. } => {
                format!("{origin}{}", upstream_path("", &remainder, query.as_deref()))
            }
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn local_routes() {
        let c = config("");
        for (m, p, want) in [
            (Method::GET, "/", "Dashboard"),
            (Method::HEAD, "/", "Dashboard"),
            (Method::GET, "/healthz", "Health"),
            (Method::GET, "/metrics", "Metrics"),
            (Method::GET, "/test", "Test"),
        ] {
            assert_eq!(format!("{:?}", run(&c, m, p, None).unwrap()), want, "{p}");
        }
        assert_eq!(run(&c, Method::POST, "/healthz", None).unwrap_err(), RouteError::MethodNotAllowed);
        assert_eq!(run(&c, Method::POST, "/", None).unwrap_err(), RouteError::Unauthorized);
    }

    #[test]
    fn presets_and_generic_destinations() {
        let c = config("");
        let t = TOKEN;
        let cases: Vec<(String, Option<&str>, &str)> = vec![
            ("/openai/v1/chat/completions".into(), None, "https://api.openai.com/v1/chat/completions"),
            ("/groq/v1/models".into(), None, "https://api.groq.com/openai/v1/models"),
            ("//openai//v1//x/".into(), None, "https://api.openai.com//v1//x/"),
            ("/openai".into(), None, "https://api.openai.com/"),
            ("/groq".into(), None, "https://api.groq.com/openai"),
            ("/openai?".into(), None, "https://api.openai.com/?"),
            ("/openai/v1/x?a=%20b&key=1".into(), None, "https://api.openai.com/v1/x?a=%20b&key=1"),
            (format!("/{t}/openai/v1/x"), None, "https://api.openai.com/v1/x"),
            (format!("/{t}/https/api.example.com/v1/a%2Fb"), None, "https://api.example.com/v1/a%2Fb"),
            (format!("/{t}/https:/api.example.com/v1"), None, "https://api.example.com/v1"),
            (format!("/{t}/HTTPS://api.example.com:8443//v1/"), None, "https://api.example.com:8443//v1/"),
            (format!("/{t}/http/api.example.com:80/x"), None, "http://api.example.com/x"),
            (format!("/{t}/wss/api.example.com/ws"), None, "https://api.example.com/ws"),
            (format!("/{t}/ws/1.2.3.4:9/ws"), None, "http://1.2.3.4:9/ws"),
            (format!("/{t}/https/[2001:db8::1]:8443/x"), None, "https://[2001:db8::1]:8443/x"),
            (format!("/{t}/https/api.example.com"), None, "https://api.example.com/"),
            (format!("/{t}/https/api.example.com?x=1"), None, "https://api.example.com/?x=1"),
            (format!("/{t}/https/h.example/a%0d%0ab"), None, "https://h.example/a%0d%0ab"),
            ("/https/api.example.com/x".into(), Some(t), "https://api.example.com/x"),
        ];
        for (target, header, want) in cases {
            assert_eq!(dest(&c, &target, header).as_deref(), Ok(want), "{target}");
        }
    }

    #[test]
    fn refusals() {
        let c = config("");
        let t = TOKEN;
        let cases: Vec<(String, Option<&str>, RouteError)> = vec![
            (format!("/{t}"), None, RouteError::TokenOnly),
            (format!("/{t}/"), None, RouteError::TokenOnly),
            (format!("//{t}//?x=1"), None, RouteError::TokenOnly),
            (format!("/{t}/ftp/host.example/x"), None, RouteError::UnknownScheme),
            (format!("/{t}/notapreset/x"), None, RouteError::UnknownScheme),
            (format!("/{t}/https"), None, RouteError::MissingHost),
            (format!("/{t}/https//"), None, RouteError::MissingHost),
            (format!("/{t}/https/user@host.example/x"), None, RouteError::BadHost(HostError::Userinfo)),
            (format!("/{t}/https/host%2eexample/x"), None, RouteError::BadHost(HostError::ForbiddenChar)),
            (format!("/{t}/https/host\\example/x"), None, RouteError::BadHost(HostError::ForbiddenChar)),
            (format!("/{t}/https/[fe80::1%eth0]/x"), None, RouteError::BadHost(HostError::ForbiddenChar)),
            (format!("/{t}/https/host.example:0/x"), None, RouteError::BadHost(HostError::BadPort)),
            (format!("/{t}/https/host.example:70000/x"), None, RouteError::BadHost(HostError::BadPort)),
            (format!("/{t}/https/2130706433/x"), None, RouteError::BadHost(HostError::BadIpv4)),
            (format!("/{t}/https/h.example/a b"), None, RouteError::BadPath),
            (format!("/{t}/https/h.example/a\r\nb"), None, RouteError::BadPath),
            (format!("/{t}/https/h.example/a\0b"), None, RouteError::BadPath),
            ("/https/api.example.com/x".into(), None, RouteError::Unauthorized),
            ("/tok_wrongwrongwrong0/https/api.example.com/x".into(), None, RouteError::Unauthorized),
            ("/https/api.example.com/x".into(), Some("tok_wrongwrongwrong0"), RouteError::Unauthorized),
            ("/nothing".into(), None, RouteError::NoPreset { name: "nothing".into(), suggestion: None }),
        ];
        for (target, header, want) in cases {
            assert_eq!(dest(&c, &target, header), Err(want), "{target:?}");
        }
    }

    #[test]
    fn unknown_names_get_404_with_the_closest_preset_and_tokens_get_401() {
        let c = config("");
        let no = |name: &str, suggestion: Option<&str>| {
            Err(RouteError::NoPreset { name: name.into(), suggestion: suggestion.map(str::to_owned) })
        };
        let cases: Vec<(&str, Option<&str>, Result<String, RouteError>)> = vec![
            ("/opnai/v1/chat", None, no("opnai", Some("openai"))),
            ("/OpenAi/v1/chat", None, no("OpenAi", Some("openai"))),
            ("/anthropic/v1/messages", None, no("anthropic", Some("claude"))),
            ("/google/v1beta/models", None, no("google", Some("gemini"))),
            ("/grok/v1/chat", None, no("grok", Some("xai"))),
            ("/x/v1/chat", None, no("x", Some("xai"))),
            ("/groqq/v1", None, no("groqq", Some("groq"))),
            ("/favicon.ico", None, no("favicon.ico", None)),
            ("/v1/chat", None, no("v1", Some("v1"))),
            // token-shaped, a token sent, or generic mode asked for: 401
            ("/tok_wrongwrongwrong0/v1", None, Err(RouteError::Unauthorized)),
            ("/opnai/v1", Some("tok_wrongwrongwrong0"), Err(RouteError::Unauthorized)),
            ("/https/api.example.com/x", None, Err(RouteError::Unauthorized)),
            ("/WSS/api.example.com/x", None, Err(RouteError::Unauthorized)),
        ];
        for (target, header, want) in cases {
            assert_eq!(dest(&c, target, header), want, "{target}");
        }
        // The unified endpoint (§13) is not a preset.
        assert!(matches!(run(&c, Method::POST, "/v1/chat/completions", None), Ok(Route::Unified { .. })));
        assert!(matches!(run(&c, Method::GET, "/v1/models", None), Ok(Route::UnifiedModels { .. })));
        let long = "n".repeat(100);
        match dest(&c, &format!("/{long}.x"), None) {
            Err(RouteError::NoPreset { name, .. }) => assert_eq!(name.chars().count(), MAX_QUOTED + 1),
            other => panic!("{other:?}"),
        }
        let message = no_preset("anthropic", &c.presets).to_string();
        assert_eq!(message, "no preset named \"anthropic\"; did you mean /claude?");
    }

    #[test]
    fn the_numeric_route_decodes_its_base_url() {
        use base64::Engine;
        let b64 = |url: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url);
        let padded = |url: &str| base64::engine::general_purpose::URL_SAFE.encode(url);
        let c = config("");
        let t = TOKEN;
        for (target, want) in [
            (
                format!("/{t}/3/{}/v1/models?x=1", b64("https://api.example.com/base")),
                "https://api.example.com/base/v1/models?x=1",
            ),
            (format!("/{t}/0/{}/v1", b64("https://api.example.com/base/")), "https://api.example.com/base/v1"),
            (format!("/{t}/0/{}", b64("https://api.example.com/only")), "https://api.example.com/only"),
            (format!("/{t}/0/{}/", padded("wss://api.example.com:8443/rt")), "https://api.example.com:8443/rt"),
            (format!("/{t}/7/{}/a%2Fb//c", b64("http://[2001:db8::1]")), "http://[2001:db8::1]/a%2Fb//c"),
        ] {
            assert_eq!(dest(&c, &target, None).as_deref(), Ok(want), "{target}");
        }
        match run(&c, Method::GET, &format!("/{t}/5/{}/x", b64("https://api.example.com")), None).unwrap() {
            Route::Generic { exit, .. } => assert_eq!(exit, Some(5)),
            other => panic!("{other:?}"),
        }
        for bad in [
            format!("/{t}/1/not*base64/x"),
            format!("/{t}/1/{}/x", b64("https://api.example.com/?q=1")),
            format!("/{t}/1/{}/x", b64("https://api.example.com/#frag")),
            format!("/{t}/1/{}/x", b64("ftp://api.example.com")),
            format!("/{t}/1/{}/x", b64("https://user@api.example.com")),
            format!("/{t}/1/{}/x", b64("api.example.com")),
            format!("/{t}/99999999999999999999999/{}/x", b64("https://api.example.com")),
            format!("/{t}/1"),
        ] {
            let e = dest(&c, &bad, None).unwrap_err();
            assert!(matches!(e, RouteError::BadNumericRoute(_)), "{bad}: {e:?}");
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn edit_distances() {
        for (a, b, d) in [
            ("", "", 0),
            ("openai", "openai", 0),
            ("opnai", "openai", 1),
            ("groq", "grok", 1),
            ("x", "xai", 2),
            ("kitten", "sitting", 3),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
        }
    }

    #[test]
    fn preset_auth_and_disabled_presets() {
        let c = config("preset_auth = true\n[presets.claude]\nenabled = false");
        assert_eq!(dest(&c, "/openai/v1", None), Err(RouteError::Unauthorized));
        assert!(dest(&c, &format!("/{TOKEN}/openai/v1"), None).is_ok());
        assert!(dest(&c, "/openai/v1", Some(TOKEN)).is_ok());
        let gone = RouteError::NoPreset { name: "claude".into(), suggestion: None };
        assert_eq!(dest(&c, "/claude/v1", None), Err(gone), "a disabled preset does not exist");
        // a disabled preset name is an unknown scheme once authenticated
        assert_eq!(dest(&c, &format!("/{TOKEN}/claude/v1"), None), Err(RouteError::UnknownScheme));
        match run(&c, Method::GET, &format!("/{TOKEN}/openai/v1"), None).unwrap() {
            Route::Preset { caller, .. } => assert!(caller.is_admin()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn generic_origin_fields() {
        let c = config("");
        match run(&c, Method::GET, &format!("/{TOKEN}/wss/API.Example.com/x"), None).unwrap() {
            Route::Generic { origin, .. } => {
                assert_eq!(origin.host, Host::Name("api.example.com".into()));
                assert_eq!((origin.scheme, origin.port), (Scheme::Https, 443));
            }
            other => panic!("{other:?}"),
        }
    }
}
