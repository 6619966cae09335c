//! Who is calling (SPEC §9): the admin token in the first path segment or
//! in `x-veilgate-token`, or a bearer token for `/metrics` → [`Caller`].
//! Every comparison is constant-time; no token is ever forwarded or
//! logged. Client tokens (§11) will arrive here as a third kind of caller.

use std::fmt;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use std::sync::Arc;

use crate::client::{Client, Clients};
use crate::config::ConfigError;
use crate::route::segment;

/// The auth token: 16–128 characters of `[A-Za-z0-9_-]`. Its `Debug` and
/// `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// 32 random bytes, URL-safe base64 (43 characters).
    pub fn generate() -> Token {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        Token(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn parse(s: &str, source: &str) -> Result<Token, ConfigError> {
        let ok_len = (16..=128).contains(&s.len());
        let ok_chars = s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_len || !ok_chars {
            return Err(ConfigError(format!(
                "{source}: the auth token must be 16 to 128 characters of A-Z a-z 0-9 _ -"
            )));
        }
        Ok(Token(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a candidate (no early exit on the
    /// first differing byte).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let a = self.0.as_bytes();
        let mut diff = (a.len() != candidate.len()) as u8;
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ candidate.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Who sent a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// No token, or a wrong one.
    Anonymous,
    /// The `auth_token`: may do everything.
    Admin,
    /// A `[[clients]]` token.
    Client(Arc<Client>),
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin)
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Caller::Anonymous)
    }

    /// The name the access log gives this caller (`admin`, a client's
    /// name, or none) — never a token.
    pub fn name(&self) -> Option<Arc<str>> {
        match self {
            Caller::Anonymous => None,
            Caller::Admin => {
                static ADMIN: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("admin"));
                Some(Arc::clone(&ADMIN))
            }
            Caller::Client(c) => Some(Arc::clone(&c.name)),
        }
    }

    /// May this caller use the preset `route`? (Anonymous callers are
    /// decided by the route: that depends on the configuration.)
    /// The client, when the caller is one.
    pub fn client(&self) -> Option<Arc<Client>> {
        match self {
            Caller::Client(c) => Some(Arc::clone(c)),
            _ => None,
        }
    }

    pub fn may_use_preset(&self, route: &str) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Admin => true,
            Caller::Client(c) => c.may_use(route),
        }
    }

    /// May this caller use generic routes and their tunnels?
    pub fn may_use_generic(&self) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Admin => true,
            Caller::Client(c) => c.generic,
        }
    }
}

/// Where a caller's token was presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented {
    /// No token at all.
    Nothing,
    /// The first path segment (removed from the path that routing reads).
    Path,
    /// `x-veilgate-token` (right or wrong).
    Header,
}

/// The caller of a request and the path left once its token is taken off.
#[derive(Clone, Debug)]
pub struct Identified<'a> {
    pub caller: Caller,
    pub presented: Presented,
    /// The path after the token segment (the whole path otherwise).
    pub rest: &'a str,
}

/// Who holds `token`: the admin, a client, or nobody.
pub(crate) fn holder(token: &[u8], admin: &Token, clients: &Clients) -> Option<Caller> {
    if admin.matches(token) {
        return Some(Caller::Admin);
    }
    clients.find(token).map(Caller::Client)
}

/// Finds the caller of a request from its raw path and `x-veilgate-token`.
/// A token in the path wins over the header. Only a segment shaped like a
/// token (16–128 of `[A-Za-z0-9_-]`) is hashed against the clients'.
pub fn identify<'a>(path: &'a str, header_token: Option<&[u8]>, admin: &Token, clients: &Clients) -> Identified<'a> {
    if let Some((first, after)) = segment(path) {
        if admin.matches(first.as_bytes()) {
            return Identified { caller: Caller::Admin, presented: Presented::Path, rest: after };
        }
        let candidate = (!clients.is_empty() && is_token_shaped(first))
            || (clients.accepts_jwts() && crate::jwt::is_jwt_shaped(first));
        if candidate && let Some(client) = clients.find(first.as_bytes()) {
            return Identified { caller: Caller::Client(client), presented: Presented::Path, rest: after };
        }
    }
    match header_token {
        Some(t) => match holder(t, admin, clients) {
            Some(caller) => Identified { caller, presented: Presented::Header, rest: path },
            None => Identified { caller: Caller::Anonymous, presented: Presented::Header, rest: path },
        },
        None => Identified { caller: Caller::Anonymous, presented: Presented::Nothing, rest: path },
    }
}

/// True when a segment has the shape of a token (16–128 of `[A-Za-z0-9_-]`).
pub fn is_token_shaped(segment: &str) -> bool {
    (16..=128).contains(&segment.len()) && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The header a veilgate token may come in instead of the path (§9).
pub const TOKEN_HEADER: http::HeaderName = http::HeaderName::from_static("x-veilgate-token");

/// The caller of `Authorization: Bearer <token>` (`/metrics`).
pub fn bearer(headers: &HeaderMap, admin: &Token, clients: &Clients) -> Caller {
    let presented = headers.get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).unwrap_or_default();
    holder(presented, admin, clients).unwrap_or(Caller::Anonymous)
}

/// The caller of `Authorization: Bearer <token>`, else of
/// `x-veilgate-token` (`/usage`).
pub fn from_headers(headers: &HeaderMap, admin: &Token, clients: &Clients) -> Caller {
    match bearer(headers, admin, clients) {
        Caller::Anonymous => {
            headers.get(TOKEN_HEADER).and_then(|v| holder(v.as_bytes(), admin, clients)).unwrap_or(Caller::Anonymous)
        }
        known => known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "auth_token_0123456789";

    #[test]
    fn callers() {
        let admin = Token::parse(TOKEN, "test").unwrap();
        let path = format!("//{TOKEN}/https/h/x");
        let none = Clients::default();
        // path, x-veilgate-token → the caller's name, where, the path left
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Presented, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (&path, None, Some("admin"), Presented::Path, "/https/h/x"),
            (&path, Some("wrong_token_000000000"), Some("admin"), Presented::Path, "/https/h/x"),
            ("/https/h/x", Some(TOKEN), Some("admin"), Presented::Header, "/https/h/x"),
            ("/https/h/x", Some("wrong_token_000000000"), None, Presented::Header, "/https/h/x"),
            ("/openai/v1", None, None, Presented::Nothing, "/openai/v1"),
            ("/auth_token_012345678/x", None, None, Presented::Nothing, "/auth_token_012345678/x"),
        ];
        for (p, header, caller, presented, rest) in &cases {
            let found = identify(p, header.map(str::as_bytes), &admin, &none);
            let name = found.caller.name();
            assert_eq!((name.as_deref(), found.presented, found.rest), (*caller, *presented, *rest), "{p} {header:?}");
        }
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers, &admin, &none).is_anonymous());
        headers.insert(AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
        assert!(bearer(&headers, &admin, &none).is_admin());
        headers.insert(AUTHORIZATION, TOKEN.parse().unwrap());
        assert!(bearer(&headers, &admin, &none).is_anonymous(), "only as a bearer token");

        // Client tokens, in the path or the header.
        let mut clients = Clients::default();
        let alice = crate::client::Client::new("alice", crate::client::sha256(b"alice_token_0123456789"), None, false);
        clients.push(alice.unwrap()).unwrap();
        let found = identify("/alice_token_0123456789/openai/v1", None, &admin, &clients);
        assert_eq!((found.caller.name().as_deref(), found.rest), (Some("alice"), "/openai/v1"));
        let found = identify("/openai/v1", Some(b"alice_token_0123456789"), &admin, &clients);
        assert_eq!((found.caller.name().as_deref(), found.presented), (Some("alice"), Presented::Header));
        let found = identify("/bob_token_0123456789xx/openai/v1", None, &admin, &clients);
        assert!(found.caller.is_anonymous() && found.rest == "/bob_token_0123456789xx/openai/v1");
    }
}
