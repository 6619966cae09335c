//! Who is calling (SPEC §9): the admin token in the first path segment or
//! in `x-veilgate-token`, or a bearer token for `/metrics` → [`Caller`].
//! Every comparison is constant-time; no token is ever forwarded or
//! logged. Client tokens (§11) will arrive here as a third kind of caller.

use std::fmt;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::config::ConfigError;
use crate::route::segment;

/// The auth token: 16–128 characters of `[A-Za-z0-9_-]`. Its `Debug` and
/// `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// 32 random bytes, URL-safe base64 (43 characters).
    pub(crate) fn generate() -> Token {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No token, or a wrong one.
    Anonymous,
    /// The `auth_token`: may do everything.
    Admin,
}

impl Caller {
    pub fn is_admin(self) -> bool {
        self == Caller::Admin
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
#[derive(Clone, Copy, Debug)]
pub struct Identified<'a> {
    pub caller: Caller,
    pub presented: Presented,
    /// The path after the token segment (the whole path otherwise).
    pub rest: &'a str,
}

/// Finds the caller of a request from its raw path and `x-veilgate-token`.
/// A token in the path wins over the header.
pub fn identify<'a>(path: &'a str, header_token: Option<&[u8]>, admin: &Token) -> Identified<'a> {
    if let Some((first, after)) = segment(path)
        && admin.matches(first.as_bytes())
    {
        return Identified { caller: Caller::Admin, presented: Presented::Path, rest: after };
    }
    match header_token {
        Some(t) if admin.matches(t) => Identified { caller: Caller::Admin, presented: Presented::Header, rest: path },
        Some(_) => Identified { caller: Caller::Anonymous, presented: Presented::Header, rest: path },
        None => Identified { caller: Caller::Anonymous, presented: Presented::Nothing, rest: path },
    }
}

/// The caller of `Authorization: Bearer <token>` (`/metrics`).
pub fn bearer(headers: &HeaderMap, admin: &Token) -> Caller {
    let presented = headers.get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).unwrap_or_default();
    if admin.matches(presented) { Caller::Admin } else { Caller::Anonymous }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "auth_token_0123456789";

    #[test]
    fn callers() {
        let admin = Token::parse(TOKEN, "test").unwrap();
        let path = format!("//{TOKEN}/https/h/x");
        let cases: Vec<(&str, Option<&str>, Caller, Presented, &str)> = vec![
            (&path, None, Caller::Admin, Presented::Path, "/https/h/x"),
            (&path, Some("wrong_token_000000000"), Caller::Admin, Presented::Path, "/https/h/x"),
            ("/https/h/x", Some(TOKEN), Caller::Admin, Presented::Header, "/https/h/x"),
            ("/https/h/x", Some("wrong_token_000000000"), Caller::Anonymous, Presented::Header, "/https/h/x"),
            ("/openai/v1", None, Caller::Anonymous, Presented::Nothing, "/openai/v1"),
            ("/auth_token_012345678/x", None, Caller::Anonymous, Presented::Nothing, "/auth_token_012345678/x"),
        ];
        for (p, header, caller, presented, rest) in cases {
            let found = identify(p, header.map(str::as_bytes), &admin);
            assert_eq!((found.caller, found.presented, found.rest), (caller, presented, rest), "{p} {header:?}");
        }
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers, &admin), Caller::Anonymous);
        headers.insert(AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
        assert!(bearer(&headers, &admin).is_admin());
        headers.insert(AUTHORIZATION, TOKEN.parse().unwrap());
        assert_eq!(bearer(&headers, &admin), Caller::Anonymous, "only as a bearer token");
    }
}
