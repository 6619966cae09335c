//! The endpoints veilgate answers itself and the checks made before any
//! routing: the dashboard, `/healthz`, `/metrics`, CORS preflights and
//! headers, the request-head size, and the `Host` check that keeps web
//! pages from reaching a loopback veilgate by DNS rebinding.

use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::App;
use crate::auth;
use crate::auth::Caller;
use crate::body::{Body, empty, full};
use crate::config::{Config, Cors, protocol_name};
use crate::dashboard;
use crate::dns::Doh;
use crate::error::Error;
use crate::keys::KeyState;
use crate::preset::{ModelInfo, Preset};

pub(super) fn dashboard(app: &App, config: &Config, headers: &HeaderMap) -> Response<Body> {
    let challenged = app.transports.challenged_origins();
    let page = dashboard::render(&config.presets, config.force_fetch_default, &challenged, &config.exits);
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
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// `GET /metrics`: the admin token as a bearer token.
pub(super) fn metrics(app: &App, config: &Config, headers: &HeaderMap) -> Result<Response<Body>, Error> {
    if !auth::bearer(headers, &app.token, &config.clients).is_admin() {
        return Err(Error::Route(crate::route::RouteError::Unauthorized));
    }
    let mut usage = app.ledger().map(|l| l.render_metrics()).unwrap_or_default();
    usage.push_str(&key_states(config));
    usage.push_str(&crate::egress::render_metrics(&config.exits));
    let mut resp = Response::new(full(app.metrics.render(app.transports.socket.pool().idle_count(), &usage)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(resp)
}

/// `GET /internal/v1/topology` (the admin only: `authorization: Bearer`,
/// `x-veilgate-token` or the seed's `x-internal-auth`): the exits.
pub(super) fn topology(app: &App, config: &Config, headers: &HeaderMap) -> Result<Response<Body>, Error> {
    let internal = headers.get("x-internal-auth").is_some_and(|v| app.token.matches(v.as_bytes()));
    if !internal && !auth::from_headers(headers, &app.token, &config.clients).is_admin() {
        return Err(Error::Route(crate::route::RouteError::Unauthorized));
    }
    let loaded = config.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now = crate::usage::time::unix_ms(std::time::SystemTime::now());
    Ok(json_reply(&crate::egress::topology(&config.exits, loaded, now)))
}

/// The largest DNS message the relay takes from a client.
const MAX_RELAYED: usize = 4096;

/// `/<token>/dns-query` (§10, SpectreProxy's relay): `GET ?dns=<base64url>`
/// or `POST` of `application/dns-message` (≤ 4096 bytes), sent to the DoH
/// servers with none of the client's headers; the server's DNS message
/// comes back.
pub(super) async fn dns_relay(doh: Option<&Doh>, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    use base64::Engine;
    use http_body_util::BodyExt;
    let doh = doh.ok_or_else(|| Error::Dns("no DoH server is configured".into()))?;
    let message = match *req.method() {
        Method::GET | Method::HEAD => {
            let param = req.uri().query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("dns=")));
            let param = param.ok_or_else(|| Error::BadQuery("dns-query needs ?dns=<base64url>".into()))?;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(param.trim_end_matches('='))
                .map_err(|_| Error::BadQuery("dns= is not base64url".into()))?
        }
        Method::POST => {
            let typed =
                req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/dns-message");
            if !typed {
                return Err(Error::NotDnsMessage);
            }
            let mut body = req.into_body();
            let mut message = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Error::BodyRead(e.to_string()))?;
                let Ok(data) = frame.into_data() else { continue };
                if message.len() + data.len() > MAX_RELAYED {
                    return Err(Error::BodyTooLarge { limit: MAX_RELAYED as u64 });
                }
                message.extend_from_slice(&data);
            }
            message
        }
        _ => return Err(Error::Route(crate::route::RouteError::MethodNotAllowed)),
    };
    if message.len() < 12 || message.len() > MAX_RELAYED {
        return Err(Error::BadQuery("not a DNS message".into()));
    }
    let answer = doh.ask(bytes::Bytes::from(message)).await.map_err(Error::Dns)?;
    let mut resp = Response::new(full(answer));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dns-message"));
    Ok(resp)
}

/// `GET /<preset>/v1/models[/<id>]` from the preset's declared models, in
/// OpenAI's list shape; an undeclared id is veilgate's 404.
pub(super) fn models(preset: &Preset, id: Option<&str>) -> Result<Response<Body>, Error> {
    let card = |m: &ModelInfo| {
        json!({
            "id": m.id,
            "object": "model",
            "created": 0,
            "owned_by": preset.route,
            "context_window": m.context_window,
            "context_length": m.context_window,
            "max_completion_tokens": m.max_output_tokens,
        })
    };
    let body = match id {
        None => json!({ "object": "list", "data": preset.models.iter().map(card).collect::<Vec<_>>() }),
        Some(id) => match preset.models.iter().find(|m| m.id == id) {
            Some(m) => card(m),
            None => return Err(Error::NoModel { preset: preset.route.clone() }),
        },
    };
    Ok(json_reply(&body))
}

/// `GET /v1/providers`: the keyed presets `caller` may use that have a key
/// not disabled, in the seed's shape (never a key).
pub(super) fn providers(config: &Config, caller: &Caller) -> Response<Body> {
    let now = std::time::Instant::now();
    let data: Vec<_> = config
        .presets
        .iter()
        .filter(|p| p.enabled && caller.may_use_preset(&p.route))
        .filter(|p| {
            p.keys
                .as_ref()
                .is_some_and(|ring| ring.snapshot(now).iter().any(|s| !matches!(s, KeyState::Disabled { .. })))
        })
        .map(|p| json!({ "id": p.route, "object": "provider", "protocol": protocol_name(p.protocol) }))
        .collect();
    json_reply(&json!({ "object": "list", "data": data }))
}

pub(super) fn json_reply(body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `veilgate_key_state{preset,key,state}`: 1 for each key's state, 0 for
/// the others (the key named by its position, never its value).
fn key_states(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let now = std::time::Instant::now();
    for p in config.presets.iter() {
        let Some(ring) = &p.keys else { continue };
        if out.is_empty() {
            out.push_str("# HELP veilgate_key_state Held provider keys by state (1 for the state a key is in).\n");
            out.push_str("# TYPE veilgate_key_state gauge\n");
        }
        for (i, state) in ring.snapshot(now).iter().enumerate() {
            for name in ["usable", "cooling", "disabled"] {
                let v = u8::from(state.name() == name);
                let _ = writeln!(out, "veilgate_key_state{{preset=\"{}\",key=\"{i}\",state=\"{name}\"}} {v}", p.route);
            }
        }
    }
    out
}

/// While listening on loopback only loopback names (or `allowed_hosts`)
/// may appear in `Host`: a web page that rebinds its own name to
/// 127.0.0.1 must not reach veilgate.
pub(super) fn is_allowed_host(req: &Request<Incoming>, allowed: &[String]) -> bool {
    let value = match req.headers().get(header::HOST) {
        Some(v) => v.to_str().ok(),
        None => match req.uri().authority() {
            Some(a) => Some(a.as_str()),
            None => return true, // HTTP/1.0 without Host: not a browser
        },
    };
    let Some(value) = value else { return false };
    is_loopback_host(value, allowed)
}

/// `GET /healthz`, with the configuration in force: the hash of its file
/// and when it was loaded (a reload changes both).
pub(super) fn health(config: &Config) -> Response<Body> {
    let loaded = humantime::format_rfc3339_seconds(config.loaded_at);
    // In the spec's key order (a JSON object would sort them).
    let body = format!(
        "{{\"status\":\"ok\",\"version\":\"{}\",\"config\":{},\"config_loaded_at\":\"{loaded}\"}}",
        env!("CARGO_PKG_VERSION"),
        serde_json::Value::from(config.digest.as_str()),
    );
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `OPTIONS` is answered here, never forwarded.
pub(super) fn preflight(headers: &HeaderMap) -> Response<Body> {
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
pub(super) fn apply_cors(headers: &mut HeaderMap, request_origin: Option<&HeaderValue>, cors: &Cors) {
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
pub(super) fn head_size(req: &Request<Incoming>) -> usize {
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
    // What local clients nearly always send, answered without the general
    // parse below (which agrees: tested).
    if let Some(rest) = value.strip_prefix("127.0.0.1").or_else(|| value.strip_prefix("localhost"))
        && (rest.is_empty() || rest.strip_prefix(':').and_then(port).is_some())
    {
        return true;
    }
    is_loopback_host_parsed(value, allowed)
}

/// [`is_loopback_host`] without its shortcut.
fn is_loopback_host_parsed(value: &str, allowed: &[String]) -> bool {
    // Lowercased only when it has to be (a `Host` nearly never has capitals).
    let value: std::borrow::Cow<'_, str> =
        if value.bytes().any(|b| b.is_ascii_uppercase()) { value.to_ascii_lowercase().into() } else { value.into() };
    let Some((host, _port)) = split_authority(&value) else { return false };
    host == "localhost"
        || host.ends_with(".localhost")
        || (host.starts_with("127.") && host.parse::<Ipv4Addr>().is_ok())
        || host == "[::1]"
        || allowed.iter().any(|a| a == host || *a == *value)
}

/// True for an `Origin` of a page served from this machine:
/// `http(s)://` and a loopback authority (see [`is_loopback_host`]).
fn is_loopback_origin(origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else { return false };
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|authority| is_loopback_host(authority, &[]))
}

/// A port as [`split_authority`] takes it: 1–5 digits, 1–65535.
fn port(digits: &str) -> Option<u16> {
    if !(1..=5).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&p| p != 0)
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
        _ => Some(port(rest.strip_prefix(':')?)?),
    };
    let is_name =
        |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !host.starts_with('[') && !is_name(host) {
        return None;
    }
    Some((host, port))
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
            "127.0.0.1",
            "localhost:65535",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
            "app.localhost:1",
            "proxy.lan:8080",
            "box:9000",
        ] {
            assert!(is_loopback_host(ok, &allowed), "{ok}");
            assert!(is_loopback_host_parsed(ok, &allowed), "{ok}: the shortcut agrees with the parse");
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
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:",
            "127.0.0.1:+80",
        ] {
            assert!(!is_loopback_host(bad, &allowed), "{bad}");
        }
    }
}
