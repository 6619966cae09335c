//! Clients (SPEC §9, §11): callers with a token of their own and a list of
//! what they may use. veilgate keeps only the SHA-256 of each token; a
//! presented token is hashed once and compared with every client's hash in
//! constant time. Usage and limits of §11 build on these.
//!
//! A token that matched is remembered (in memory, at most one per client),
//! so a client's next requests are found by a keyed hash and one
//! constant-time comparison instead of a SHA-256 each.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::{Arc, Mutex};

use ring::digest::{SHA256, digest};

use crate::config::ConfigError;
use crate::jwt::{JwtAuth, is_jwt_shaped};
use crate::usage::ledger::Limits;

/// One `[[clients]]` entry, validated.
#[derive(Debug)]
pub struct Client {
    /// `[a-z0-9_.@-]{1,64}`, unique; named in the access log (never the token).
    pub name: Arc<str>,
    token_sha256: [u8; 32],
    /// The presets this client may use (`None`: every preset).
    pub presets: Option<Vec<String>>,
    /// Generic routes and tunnels to generic targets.
    pub generic: bool,
    /// `[clients.limits]` (or `[auth.jwt_limits]` for a JWT's client).
    pub limits: Limits,
    /// The name as the `x-veilgate-client` header value.
    pub header: http::HeaderValue,
}

impl Client {
    pub(crate) fn new(
        name: &str,
        token_sha256: [u8; 32],
        presets: Option<Vec<String>>,
        generic: bool,
    ) -> Result<Client, ConfigError> {
        let ok = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.@-".contains(&b));
        if !ok {
            return Err(ConfigError(format!("clients: the name \"{name}\" must match [a-z0-9_.@-]{{1,64}}")));
        }
        // The charset above is all visible ASCII: always a header value.
        let header = http::HeaderValue::from_str(name).map_err(|_| ConfigError(format!("clients: bad name {name}")))?;
        Ok(Client { name: Arc::from(name), token_sha256, presets, generic, limits: Limits::default(), header })
    }

    /// True when this client may use the preset `route`.
    pub fn may_use(&self, route: &str) -> bool {
        self.presets.as_ref().is_none_or(|list| list.iter().any(|p| p == route))
    }
}

/// Every configured client, and the JWT clients of `[auth]`.
#[derive(Debug, Default)]
pub struct Clients {
    list: Vec<Arc<Client>>,
    jwt: Option<JwtAuth>,
    /// The limits of every JWT's client.
    jwt_limits: Limits,
    seen: Seen,
}

/// Tokens that matched a client, by a randomly keyed hash of the token.
/// Only a token whose SHA-256 matched is added, so there are never more
/// entries than clients. `Debug` shows how many, never a token.
#[derive(Default)]
struct Seen {
    keys: RandomState,
    map: Mutex<HashMap<u64, SeenToken, RandomState>>,
}

/// A token that matched, and its client.
type SeenToken = (Box<[u8]>, Arc<Client>);

impl Seen {
    fn get(&self, token: &[u8]) -> Option<Arc<Client>> {
        let key = self.keys.hash_one(token);
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (known, client) = map.get(&key)?;
        constant_time_eq(known, token).then(|| Arc::clone(client))
    }

    fn insert(&self, token: &[u8], client: &Arc<Client>) {
        let key = self.keys.hash_one(token);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, (token.into(), Arc::clone(client)));
    }
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map_or(0, |m| m.len());
        write!(f, "Seen({n} tokens)")
    }
}

/// Equality of two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Clients {
    pub(crate) fn push(&mut self, client: Client) -> Result<(), ConfigError> {
        if self.list.iter().any(|c| c.name == client.name) {
            return Err(ConfigError(format!("clients: the name \"{}\" is used twice", client.name)));
        }
        if self.list.iter().any(|c| c.token_sha256 == client.token_sha256) {
            return Err(ConfigError(format!("clients.{}: the same token as another client", client.name)));
        }
        self.list.push(Arc::new(client));
        Ok(())
    }

    /// Accepts HS256 JWTs as client tokens from now on, each client with
    /// `limits`.
    pub(crate) fn accept_jwts(&mut self, jwt: JwtAuth, limits: Limits) {
        self.jwt = Some(jwt);
        self.jwt_limits = limits;
    }

    /// The limits of JWT clients.
    pub fn jwt_limits(&self) -> &Limits {
        &self.jwt_limits
    }

    /// True when no client token can exist (no `[[clients]]`, no `[auth]`).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.jwt.is_none()
    }

    /// The claim that names JWT clients, when JWTs are accepted.
    pub fn jwt_claim(&self) -> Option<&str> {
        self.jwt.as_ref().map(|j| j.claim.as_str())
    }

    /// True when a JWT may name a client.
    pub fn accepts_jwts(&self) -> bool {
        self.jwt.is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.list.iter()
    }

    /// The client whose token this is: a valid JWT names one (every preset,
    /// no generic routes); else every hash is compared, in constant time,
    /// whatever matches.
    pub fn find(&self, token: &[u8]) -> Option<Arc<Client>> {
        if let Some(jwt) = &self.jwt
            && let Ok(text) = std::str::from_utf8(token)
            && is_jwt_shaped(text)
        {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let name = jwt.verify(text, now).ok()?;
            let mut client = Client::new(&name, [0; 32], None, false).ok()?;
            client.limits = self.jwt_limits;
            return Some(Arc::new(client));
        }
        if self.list.is_empty() {
            return None;
        }
        if let Some(client) = self.seen.get(token) {
            return Some(client);
        }
        let presented = sha256(token);
        let mut found = None;
        for client in &self.list {
            let diff = client.token_sha256.iter().zip(presented.iter()).fold(0u8, |d, (a, b)| d | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(client);
            }
        }
        let found = found?;
        self.seen.insert(token, found);
        Some(Arc::clone(found))
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Lowercase hex of a hash.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `token_sha256` value: 64 hex digits.
pub(crate) fn parse_sha256(hex: &str, key: &str) -> Result<[u8; 32], ConfigError> {
    let bad = || ConfigError(format!("{key}: expected the 64 hex digits of a SHA-256 (veilgate token prints one)"));
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, token: &str) -> Client {
        Client::new(name, sha256(token.as_bytes()), None, false).unwrap()
    }

    #[test]
    fn tokens_find_their_client() {
        let mut clients = Clients::default();
        clients.push(client("alice", "alice-token-0123456789")).unwrap();
        clients.push(client("bob", "bob-token-0123456789")).unwrap();
        assert_eq!(&*clients.find(b"bob-token-0123456789").unwrap().name, "bob");
        assert_eq!(&*clients.find(b"alice-token-0123456789").unwrap().name, "alice");
        assert!(clients.find(b"carol-token-0123456789").is_none());
        assert!(clients.push(client("alice", "other-token-0123456789")).is_err(), "names are unique");
        assert!(clients.push(client("carol", "bob-token-0123456789")).is_err(), "tokens are unique");
    }

    #[test]
    fn a_token_seen_before_is_found_again_and_never_shown() {
        let mut clients = Clients::default();
        clients.push(client("alice", "alice-token-0123456789")).unwrap();
        clients.push(client("bob", "bob-token-0123456789")).unwrap();
        assert!(clients.find(b"alice-token-012345678").is_none());
        assert_eq!(clients.seen.map.lock().unwrap().len(), 0, "a token that matched nothing is not kept");
        for _ in 0..3 {
            assert_eq!(&*clients.find(b"alice-token-0123456789").unwrap().name, "alice");
        }
        assert_eq!(clients.seen.map.lock().unwrap().len(), 1);
        // Near misses of a remembered token are still refused.
        for wrong in [&b"alice-token-012345678"[..], b"alice-token-01234567890", b"alice-token-0123456788", b""] {
            assert!(clients.find(wrong).is_none(), "{wrong:?}");
        }
        assert_eq!(&*clients.find(b"bob-token-0123456789").unwrap().name, "bob");
        let shown = format!("{clients:?}");
        assert!(!shown.contains("alice-token") && !shown.contains("bob-token"), "{shown}");
        assert!(shown.contains("Seen(2 tokens)"), "{shown}");
    }

    #[test]
    fn names_and_hashes() {
        for bad in ["", "Alice", "a b", "ä", &"a".repeat(65)] {
            assert!(Client::new(bad, [0; 32], None, false).is_err(), "{bad:?}");
        }
        assert!(Client::new("alice@team.example", [0; 32], None, false).is_ok());
        let hash = sha256(b"test");
        assert_eq!(to_hex(&hash), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!(parse_sha256(&to_hex(&hash), "k").unwrap(), hash);
        assert!(parse_sha256("9f86", "k").is_err());
        assert!(parse_sha256(&"zz".repeat(32), "k").is_err());
        let c = Client::new("a", hash, Some(vec!["openai".into()]), false).unwrap();
        assert!(c.may_use("openai") && !c.may_use("gemini"));
    }
}
