//! The header policy: which end-to-end headers an upstream request carries,
//! and which upstream response headers reach the client.
//!
//! The upstream request is *built* from an allowlist — each allowed name is
//! looked up in the client's headers — never filtered from them, so a header
//! nobody thought of can never slip through. Framing (`host`,
//! `content-length`, `connection`, upgrade headers) is each transport's own
//! business and is not produced here.

use std::sync::LazyLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Client headers forwarded by name (lowercase), in this order.
const ALLOWED: &[&str] = &[
    "accept",
    "authorization",
    "content-type",
    "content-encoding",
    "x-api-key",
    "x-goog-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "idempotency-key",
    "last-event-id",
];

/// [`ALLOWED`] as parsed names, so that each request's lookups hash a
/// ready name instead of parsing fourteen strings again. (At most 32: the
/// names a client sent are marked in a `u32`.)
static ALLOWED_NAMES: LazyLock<Vec<HeaderName>> =
    LazyLock::new(|| ALLOWED.iter().map(|name| HeaderName::from_static(name)).collect());

const _: () = assert!(ALLOWED.len() <= 32, "the presence mask is a u32");

/// The bits of [`ALLOWED`]'s API-key headers (`authorization`, `x-api-key`,
/// `x-goog-api-key`) in the presence mask.
const KEY_SLOTS: u32 = (1 << 1) | (1 << 4) | (1 << 5);
const _: () = assert!(
    matches!(ALLOWED[1].as_bytes(), b"authorization")
        && matches!(ALLOWED[4].as_bytes(), b"x-api-key")
        && matches!(ALLOWED[5].as_bytes(), b"x-goog-api-key"),
    "KEY_SLOTS names the key headers"
);

/// The bit of `accept` in the presence mask.
const ACCEPT_SLOT: u32 = 1 << 0;
const _: () = assert!(matches!(ALLOWED[0].as_bytes(), b"accept"), "ACCEPT_SLOT names accept");

/// Client headers forwarded by prefix.
const ALLOWED_PREFIXES: &[&str] = &["x-goog-upload-"];

/// Names an operator may not add to `[headers].allow`: framing owned by the
/// transports, values the policy sets itself, and veilgate's own token.
pub(crate) const NEVER_ALLOWED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "accept-encoding",
    "user-agent",
    "x-veilgate-token",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

/// What to send as `user-agent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAgent {
    /// Send none.
    Strip,
    /// Forward the client's own.
    Pass,
    /// Send this literal (default: `veilgate`, the same for every user).
    Literal(HeaderValue),
}

impl UserAgent {
    /// `strip`, `pass`, or any other string as a literal.
    pub fn parse(s: &str) -> Result<UserAgent, http::header::InvalidHeaderValue> {
        Ok(match s {
            "strip" => UserAgent::Strip,
            "pass" => UserAgent::Pass,
            other => UserAgent::Literal(HeaderValue::from_str(other)?),
        })
    }
}

impl Default for UserAgent {
    fn default() -> Self {
        UserAgent::Literal(HeaderValue::from_static("veilgate"))
    }
}

/// An operator's addition to the allowlist: an exact name or a `prefix-*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraAllow {
    Name(HeaderName),
    Prefix(String),
}

impl ExtraAllow {
    /// Parses one `[headers].allow` entry; refuses the names of
    /// [`NEVER_ALLOWED`] and anything that is not a valid header name.
    pub fn parse(entry: &str) -> Result<ExtraAllow, String> {
        let lower = entry.to_ascii_lowercase();
        if let Some(prefix) = lower.strip_suffix('*') {
            if prefix.is_empty() || HeaderName::from_bytes(prefix.as_bytes()).is_err() {
                return Err(format!("'{entry}' is not a header name or 'prefix-*'"));
            }
            return Ok(ExtraAllow::Prefix(prefix.to_owned()));
        }
        let name =
            HeaderName::from_bytes(lower.as_bytes()).map_err(|_| format!("'{entry}' is not a valid header name"))?;
        if NEVER_ALLOWED.contains(&name.as_str()) {
            return Err(format!("'{entry}' is set by veilgate itself and cannot be allowed"));
        }
        Ok(ExtraAllow::Name(name))
    }
}

/// The request side of the policy, fixed per route.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestPolicy<'a> {
    pub extra_allow: &'a [ExtraAllow],
    pub user_agent: &'a UserAgent,
    /// WebSocket handshakes also carry `sec-websocket-protocol`.
    pub websocket: bool,
    /// The preset holds keys: the client's `authorization`, `x-api-key` and
    /// `x-goog-api-key` are never copied (§12).
    pub drop_keys: bool,
}

impl RequestPolicy<'_> {
    /// Builds the end-to-end headers of the upstream request.
    pub(crate) fn request_headers(&self, client: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(8);
        // Which allowlisted names the client sent and their first values
        // (one pass over its few headers), then those copied in the
        // allowlist's fixed order: one hash per header sent on.
        let mut present = 0u32;
        let mut repeated = 0u32;
        let mut first: [Option<&HeaderValue>; ALLOWED.len()] = [None; ALLOWED.len()];
        let mut prefixed = false;
        for (name, value) in client {
            prefixed |= ALLOWED_PREFIXES.iter().any(|p| name.as_str().starts_with(p));
            if let Some(i) = ALLOWED.iter().position(|a| *a == name.as_str()) {
                if present & (1 << i) != 0 {
                    repeated |= 1 << i;
                } else {
                    present |= 1 << i;
                    first[i] = Some(value);
                }
            }
        }
        if self.drop_keys {
            present &= !KEY_SLOTS;
        }
        for (i, name) in ALLOWED_NAMES.iter().enumerate() {
            if present & (1 << i) == 0 {
                continue;
            }
            match first[i] {
                Some(value) if repeated & (1 << i) == 0 => {
                    out.append(name.clone(), value.clone());
                }
                _ => copy_all(client, name, &mut out),
            }
        }
        if self.websocket {
            copy_all(client, &header::SEC_WEBSOCKET_PROTOCOL, &mut out);
        }
        for extra in self.extra_allow {
            if self.drop_keys && matches!(extra, ExtraAllow::Name(n) if crate::keys::KEY_HEADERS.contains(&n.as_str()))
            {
                continue;
            }
            match extra {
                ExtraAllow::Name(name) => copy_all(client, name, &mut out),
                ExtraAllow::Prefix(p) => copy_prefix(client, p, &mut out),
            }
        }
        if prefixed {
            for p in ALLOWED_PREFIXES {
                copy_prefix(client, p, &mut out);
            }
        }
        // `accept` is allowlisted: present in `out` exactly when sent.
        if present & ACCEPT_SLOT == 0 {
            out.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        out.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        match self.user_agent {
            UserAgent::Strip => {}
            UserAgent::Pass => copy_all(client, &header::USER_AGENT, &mut out),
            UserAgent::Literal(v) => {
                out.insert(header::USER_AGENT, v.clone());
            }
        }
        out
    }
}

fn copy_all(client: &HeaderMap, name: &HeaderName, out: &mut HeaderMap) {
    let mut values = client.get_all(name).iter();
    let Some(first) = values.next() else { return };
    if out.contains_key(name) {
        return; // listed twice (an operator's entry repeating a built-in)
    }
    out.append(name.clone(), first.clone());
    for v in values {
        out.append(name.clone(), v.clone());
    }
}

fn copy_prefix(client: &HeaderMap, prefix: &str, out: &mut HeaderMap) {
    for name in client.keys() {
        if name.as_str().starts_with(prefix) && !NEVER_ALLOWED.contains(&name.as_str()) && !out.contains_key(name) {
            for v in client.get_all(name) {
                out.append(name.clone(), v.clone());
            }
        }
    }
}

/// Filters an upstream response's headers in place for the client: drops
/// hop-by-hop headers (and those named by `connection`), `set-cookie`,
/// `alt-svc` and `access-control-*` (veilgate sets its own CORS headers).
/// `content-length` is kept; the server frames the body from it.
pub(crate) fn filter_response_headers(headers: &mut HeaderMap) {
    // One pass over the names present (a handful); most responses have
    // nothing to drop but `connection`, which names nothing more.
    let mut dropped: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if is_dropped(name.as_str()) {
            dropped.push(name.clone());
        }
    }
    if connection {
        let named_by_connection = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            // from_bytes lowercases: `Connection: X-Foo` names `x-foo`.
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|name| *name != header::CONTENT_LENGTH && headers.contains_key(name));
        dropped.extend(named_by_connection);
        dropped.push(header::CONNECTION);
    }
    for name in dropped {
        headers.remove(name);
    }
}

/// A response header the client never gets (besides what `connection`
/// names): the hop-by-hop ones (the server frames the response itself),
/// `set-cookie`, `alt-svc`, `access-control-*`. A `match`: by length
/// first, then the bytes, instead of a compare per listed name.
fn is_dropped(name: &str) -> bool {
    match name {
        "connection" | "keep-alive" | "proxy-connection" | "proxy-authenticate" | "te" | "trailer"
        | "transfer-encoding" | "upgrade" | "set-cookie" | "alt-svc" => true,
        other => other.starts_with("access-control-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn names(m: &HeaderMap) -> Vec<&str> {
        m.keys().map(|k| k.as_str()).collect()
    }

    /// Every identifying header an SDK, browser or intermediate proxy adds.
    const IDENTIFYING: &[(&str, &str)] = &[
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "me.example"),
        ("x-real-ip", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("via", "1.1 corp-proxy"),
        ("cf-connecting-ip", "203.0.113.7"),
        ("cf-ipcountry", "DE"),
        ("true-client-ip", "203.0.113.7"),
        ("x-client-ip", "203.0.113.7"),
        ("cookie", "session=abc"),
        ("referer", "https://me.example/page"),
        ("origin", "https://me.example"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("x-stainless-os", "MacOS"),
        ("x-stainless-arch", "arm64"),
        ("x-stainless-lang", "python"),
        ("x-goog-api-client", "genai-py/1.0"),
        ("sec-ch-ua", "\"Chromium\";v=\"140\""),
        ("sec-ch-ua-platform", "\"macOS\""),
        ("dnt", "1"),
        ("accept-language", "de-DE,de;q=0.9"),
        ("accept-encoding", "gzip, br"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("te", "trailers"),
        ("connection", "keep-alive, x-custom"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "h2c"),
        ("x-veilgate-token", "tok_tok_tok_tok_tok"),
        ("x-custom", "mine"),
        ("sec-websocket-protocol", "openai-insecure-api-key.sk-1"),
        ("sec-websocket-extensions", "permessage-deflate"),
    ];

    const KEPT: &[(&str, &str)] = &[
        ("authorization", "Bearer sk-test"),
        ("x-api-key", "sk-ant"),
        ("x-goog-api-key", "AIza"),
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "tools-2024"),
        ("openai-organization", "org-1"),
        ("openai-project", "proj-1"),
        ("openai-beta", "assistants=v2"),
        ("idempotency-key", "k1"),
        ("last-event-id", "42"),
        ("content-encoding", "gzip"),
        ("x-goog-upload-protocol", "resumable"),
        ("x-goog-upload-command", "start"),
    ];

    #[test]
    fn builds_only_the_allowlist() {
        let mut all = IDENTIFYING.to_vec();
        all.extend_from_slice(KEPT);
        let ua = UserAgent::default();
        let out = RequestPolicy { extra_allow: &[], user_agent: &ua, websocket: false, drop_keys: false }
            .request_headers(&client(&all));
        for (k, v) in KEPT {
            assert_eq!(out.get(*k).unwrap(), v, "{k} kept intact");
        }
        assert_eq!(out.get("accept-encoding").unwrap(), "identity");
        assert_eq!(out.get("user-agent").unwrap(), "veilgate");
        let mut expected: Vec<&str> = KEPT.iter().map(|(k, _)| *k).collect();
        expected.extend(["accept-encoding", "user-agent"]);
        let mut got = names(&out);
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
    }

    #[test]
    fn accept_defaults_and_multiple_values_survive() {
        let ua = UserAgent::Strip;
        let p = RequestPolicy { extra_allow: &[], user_agent: &ua, websocket: false, drop_keys: false };
        let out = p.request_headers(&client(&[("x-stainless-os", "Linux")]));
        assert_eq!(out.get("accept").unwrap(), "*/*");
        assert!(out.get("user-agent").is_none(), "strip sends none");
        let out = p.request_headers(&client(&[("accept", "a/b"), ("accept", "c/d")]));
        let accepts: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(accepts, ["a/b", "c/d"]);
    }

    #[test]
    fn user_agent_modes() {
        let c = client(&[("user-agent", "curl/8.0")]);
        let cases = [
            (UserAgent::Pass, Some("curl/8.0")),
            (UserAgent::Strip, None),
            (UserAgent::parse("my-app/1").unwrap(), Some("my-app/1")),
            (UserAgent::default(), Some("veilgate")),
        ];
        for (ua, want) in cases {
            let out = RequestPolicy { extra_allow: &[], user_agent: &ua, websocket: false, drop_keys: false }
                .request_headers(&c);
            assert_eq!(out.get("user-agent").map(|v| v.to_str().unwrap()), want, "{ua:?}");
        }
        // pass with no client user-agent sends none
        let out = RequestPolicy { extra_allow: &[], user_agent: &UserAgent::Pass, websocket: false, drop_keys: false }
            .request_headers(&HeaderMap::new());
        assert!(out.get("user-agent").is_none());
    }

    #[test]
    fn operator_additions() {
        let extra = [ExtraAllow::parse("X-Custom").unwrap(), ExtraAllow::parse("x-trace-*").unwrap()];
        let ua = UserAgent::default();
        let c = client(&[("x-custom", "1"), ("x-trace-id", "2"), ("x-trace", "3"), ("x-other", "4")]);
        let out = RequestPolicy { extra_allow: &extra, user_agent: &ua, websocket: false, drop_keys: false }
            .request_headers(&c);
        assert_eq!(out.get("x-custom").unwrap(), "1");
        assert_eq!(out.get("x-trace-id").unwrap(), "2");
        assert!(out.get("x-trace").is_none());
        assert!(out.get("x-other").is_none());
        for refused in ["host", "Content-Length", "x-veilgate-token", "user-agent", "bad name", "*"] {
            assert!(ExtraAllow::parse(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn websocket_carries_subprotocol_but_never_extensions() {
        let c = client(&[
            ("sec-websocket-protocol", "realtime, openai-beta.realtime-v1"),
            ("sec-websocket-extensions", "permessage-deflate"),
        ]);
        let ua = UserAgent::default();
        let http =
            RequestPolicy { extra_allow: &[], user_agent: &ua, websocket: false, drop_keys: false }.request_headers(&c);
        assert!(http.get("sec-websocket-protocol").is_none());
        let ws =
            RequestPolicy { extra_allow: &[], user_agent: &ua, websocket: true, drop_keys: false }.request_headers(&c);
        assert_eq!(ws.get("sec-websocket-protocol").unwrap(), "realtime, openai-beta.realtime-v1");
        assert!(ws.get("sec-websocket-extensions").is_none());
    }

    #[test]
    fn response_filter() {
        let mut h = client(&[
            ("content-type", "text/event-stream"),
            ("content-length", "12"),
            ("connection", "keep-alive, x-hop, X-Upper-Hop"),
            ("x-hop", "1"),
            ("x-upper-hop", "2"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=b"),
            ("set-cookie", "c=d"),
            ("alt-svc", "h3=\":443\""),
            ("access-control-allow-origin", "https://evil.example"),
            ("access-control-allow-credentials", "true"),
            ("x-request-id", "req-1"),
            ("openai-processing-ms", "12"),
        ]);
        filter_response_headers(&mut h);
        let mut got = names(&h);
        got.sort_unstable();
        assert_eq!(got, ["content-length", "content-type", "openai-processing-ms", "x-request-id"]);
    }
}
