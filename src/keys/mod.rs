//! Provider keys held by veilgate (SPEC §12): a preset's [`Keyring`] picks
//! a key round-robin among the usable ones, benches the ones the upstream
//! refuses — `disabled` after a 401/403 until a probe succeeds, `cooling`
//! after a 429 until its reset — and never drops a key for good.
//!
//! A key's bytes leave veilgate only inside a [`Credential`], which names
//! the one origin it is for; the transports write it only on a request to
//! that origin. A keyring is built for its preset's targets and makes
//! credentials for those alone, so no code path can hand a held key to a
//! generic route, a redirect target or another preset. `Debug` and
//! `Display` of a key show its masked form.

pub mod reset;
pub mod vault;

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::policy::target::Origin;

/// The header a preset's key goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyHeader {
    /// `authorization: Bearer <key>` (OpenAI and compatible APIs).
    Authorization,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
    /// `x-goog-api-key: <key>` (Gemini).
    XGoogApiKey,
}

impl KeyHeader {
    pub fn parse(s: &str) -> Option<KeyHeader> {
        match s {
            "authorization" => Some(KeyHeader::Authorization),
            "x-api-key" => Some(KeyHeader::XApiKey),
            "x-goog-api-key" => Some(KeyHeader::XGoogApiKey),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyHeader::Authorization => "authorization",
            KeyHeader::XApiKey => "x-api-key",
            KeyHeader::XGoogApiKey => "x-goog-api-key",
        }
    }

    fn name(self) -> HeaderName {
        match self {
            KeyHeader::Authorization => AUTHORIZATION,
            other => HeaderName::from_static(other.as_str()),
        }
    }
}

/// Where a key came from, as `check-config` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `env:NAME` / `file:PATH`, as written.
    Reference(String),
    /// Written in the file itself (`check-config` warns).
    Literal,
    /// `[vault]`.
    Vault,
}

/// One provider key. Its value is reachable only as the header a
/// [`Credential`] writes.
pub struct ProviderKey {
    /// The header value, marked sensitive (`Bearer ` included for
    /// `authorization`).
    value: HeaderValue,
    masked: String,
    pub source: KeySource,
}

impl ProviderKey {
    /// A key for `header`; `None` when it cannot be a header value.
    pub fn new(secret: &str, header: KeyHeader, source: KeySource) -> Option<ProviderKey> {
        let text = match header {
            KeyHeader::Authorization => format!("Bearer {secret}"),
            _ => secret.to_owned(),
        };
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some(ProviderKey { value, masked: mask(secret), source })
    }

    /// First 3 and last 4 characters (`sk-…abcd`); `***` for a short key.
    pub fn masked(&self) -> &str {
        &self.masked
    }
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderKey({})", self.masked)
    }
}

impl fmt::Display for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

/// The masked form of SPEC §12: first 3 and last 4 characters.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "***".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// A key's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Usable,
    /// A 429: usable again at `until` (not a failure).
    Cooling {
        until: Instant,
        until_wall: SystemTime,
    },
    /// A 401/403: probed at `next_probe`, usable again on a 2xx.
    Disabled {
        next_probe: Instant,
    },
}

impl KeyState {
    pub fn name(&self) -> &'static str {
        match self {
            KeyState::Usable => "usable",
            KeyState::Cooling { .. } => "cooling",
            KeyState::Disabled { .. } => "disabled",
        }
    }
}

/// Why a request found no key to send with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoKey {
    /// Every key not yet tried is cooling; the soonest is usable again
    /// after this long.
    Cooling(Duration),
    /// Every key not yet tried is disabled (or there is none left).
    Disabled,
}

/// The keys tried for one request (at most 64 keys are told apart; a
/// keyring of more treats the rest as tried once the first 64 were).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    fn has(self, i: usize) -> bool {
        i >= 64 || self.0 & (1 << i) != 0
    }

    pub fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }
}

/// What the upstream's answer says of the key that was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing about the key.
    Fine,
    /// 401/403: the key was disabled.
    Refused,
    /// 429: the key cools.
    Limited,
}

/// A preset's keys and their states.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<ProviderKey>,
    header: KeyHeader,
    /// The preset's targets: the only origins a credential is made for.
    origins: Vec<Origin>,
    pub probe_path: String,
    pub probe_interval: Duration,
    next: AtomicUsize,
    states: Mutex<Vec<KeyState>>,
}

/// Everything a keyring is built from.
pub struct KeyringSpec {
    pub keys: Vec<ProviderKey>,
    pub header: KeyHeader,
    pub origins: Vec<Origin>,
    pub probe_path: String,
    pub probe_interval: Duration,
}

impl Keyring {
    pub fn new(spec: KeyringSpec) -> Keyring {
        let states = Mutex::new(vec![KeyState::Usable; spec.keys.len()]);
        Keyring {
            keys: spec.keys,
            header: spec.header,
            origins: spec.origins,
            probe_path: spec.probe_path,
            probe_interval: spec.probe_interval,
            next: AtomicUsize::new(0),
            states,
        }
    }

    pub fn header(&self) -> KeyHeader {
        self.header
    }

    pub fn keys(&self) -> &[ProviderKey] {
        &self.keys
    }

    /// The same keys, header, origins and probing as `other` (a reload
    /// keeps `other` and its keys' states then).
    pub fn same_as(&self, other: &Keyring) -> bool {
        self.header == other.header
            && self.origins == other.origins
            && self.probe_path == other.probe_path
            && self.probe_interval == other.probe_interval
            && self.keys.len() == other.keys.len()
            && self.keys.iter().zip(&other.keys).all(|(a, b)| a.value == b.value)
    }

    fn states(&self) -> std::sync::MutexGuard<'_, Vec<KeyState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every key's state now (cooling that has ended reads as usable).
    pub fn snapshot(&self, now: Instant) -> Vec<KeyState> {
        self.states()
            .iter()
            .map(|s| match s {
                KeyState::Cooling { until, .. } if *until <= now => KeyState::Usable,
                s => *s,
            })
            .collect()
    }

    /// The next usable key not in `tried`, round-robin.
    pub fn pick(&self, tried: Tried, now: Instant) -> Result<usize, NoKey> {
        let n = self.keys.len();
        if n == 0 {
            return Err(NoKey::Disabled);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut states = self.states();
        let mut soonest: Option<Instant> = None;
        for step in 0..n {
            let i = (start + step) % n;
            if tried.has(i) {
                continue;
            }
            match states[i] {
                KeyState::Usable => return Ok(i),
                KeyState::Cooling { until, .. } if until <= now => {
                    states[i] = KeyState::Usable;
                    return Ok(i);
                }
                KeyState::Cooling { until, .. } => soonest = Some(soonest.map_or(until, |s| s.min(until))),
                KeyState::Disabled { .. } => {}
            }
        }
        Err(soonest.map_or(NoKey::Disabled, |at| NoKey::Cooling(at - now)))
    }

    /// Records what the upstream answered to key `i`.
    pub fn judge(&self, i: usize, status: u16, headers: &HeaderMap, now: Instant) -> Verdict {
        let verdict = match status {
            401 | 403 => Verdict::Refused,
            429 => Verdict::Limited,
            _ => return Verdict::Fine,
        };
        let mut states = self.states();
        let Some(state) = states.get_mut(i) else { return Verdict::Fine };
        *state = match verdict {
            Verdict::Refused => KeyState::Disabled { next_probe: now + self.probe_interval },
            _ => {
                let wall = SystemTime::now();
                let d = reset::cooling(headers, wall);
                KeyState::Cooling { until: now + d, until_wall: wall + d }
            }
        };
        verdict
    }

    /// The disabled keys whose probe is due; their next probe is moved on
    /// (a probe in flight is not started twice).
    pub fn due_probes(&self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, s) in self.states().iter_mut().enumerate() {
            if let KeyState::Disabled { next_probe } = s
                && *next_probe <= now
            {
                *next_probe = now + self.probe_interval;
                due.push(i);
            }
        }
        due
    }

    /// A probe's answer: a 2xx makes a disabled key usable again; anything
    /// else leaves it disabled until the next probe.
    pub fn probed(&self, i: usize, success: bool) {
        if success && let Some(s) = self.states().get_mut(i) {
            *s = KeyState::Usable;
        }
    }

    /// Key `i` for a request to `origin`, when `origin` is one of this
    /// preset's targets.
    pub fn credential(&self, i: usize, origin: &Origin) -> Option<Credential> {
        let key = self.keys.get(i)?;
        self.origins.contains(origin).then(|| Credential {
            name: self.header.name(),
            value: key.value.clone(),
            origin: origin.clone(),
            index: i,
        })
    }
}

/// A held key bound to the one origin it may be sent to.
#[derive(Clone)]
pub struct Credential {
    name: HeaderName,
    value: HeaderValue,
    origin: Origin,
    /// The key's position in its keyring.
    pub index: usize,
}

impl Credential {
    /// The header to write on a request to `origin`: `None` for any other
    /// origin, so a credential can never travel elsewhere.
    pub fn header_for(&self, origin: &Origin) -> Option<(&HeaderName, &HeaderValue)> {
        (self.origin == *origin).then_some((&self.name, &self.value))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}: key {} for {})", self.name, self.index, self.origin)
    }
}

/// The client key slots a keyed preset empties: the SDKs' API-key headers.
pub const KEY_HEADERS: &[&str] = &["authorization", "x-api-key", "x-goog-api-key"];

/// `query` without its `key=` parameters (every other byte kept); `None`
/// when nothing is left.
pub fn strip_key_param(query: &str) -> Option<String> {
    let kept: Vec<&str> = query.split('&').filter(|p| *p != "key" && !p.starts_with("key=")).collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::target::parse_url;

    fn origin(url: &str) -> Origin {
        parse_url(url).unwrap().0
    }

    fn ring(n: usize) -> Keyring {
        let keys = (0..n)
            .map(|i| ProviderKey::new(&format!("sk-test-key-number-{i}"), KeyHeader::Authorization, KeySource::Literal))
            .collect::<Option<Vec<_>>>()
            .unwrap();
        Keyring::new(KeyringSpec {
            keys,
            header: KeyHeader::Authorization,
            origins: vec![origin("https://api.example.com")],
            probe_path: "/v1/models".into(),
            probe_interval: Duration::from_secs(10),
        })
    }

    #[test]
    fn round_robin_over_usable_keys() {
        let r = ring(3);
        let now = Instant::now();
        let picks: Vec<usize> = (0..6).map(|_| r.pick(Tried::default(), now).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        r.judge(1, 401, &HeaderMap::new(), now);
        let picks: Vec<usize> = (0..4).map(|_| r.pick(Tried::default(), now).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(r.judge(0, 500, &HeaderMap::new(), now), Verdict::Fine, "a 500 says nothing of the key");
    }

    #[test]
    fn a_refused_key_is_probed_and_comes_back() {
        let r = ring(1);
        let now = Instant::now();
        assert_eq!(r.judge(0, 403, &HeaderMap::new(), now), Verdict::Refused);
        assert_eq!(r.pick(Tried::default(), now), Err(NoKey::Disabled));
        assert!(r.due_probes(now).is_empty(), "not yet");
        let later = now + Duration::from_secs(10);
        assert_eq!(r.due_probes(later), [0]);
        assert!(r.due_probes(later).is_empty(), "a probe in flight is not started twice");
        r.probed(0, false);
        assert_eq!(r.pick(Tried::default(), later), Err(NoKey::Disabled), "a failed probe keeps it disabled");
        assert_eq!(r.due_probes(later + Duration::from_secs(10)), [0], "and it is probed again: never for good");
        r.probed(0, true);
        assert_eq!(r.pick(Tried::default(), later), Ok(0));
    }

    #[test]
    fn a_limited_key_cools_until_its_reset() {
        let r = ring(2);
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("30"));
        assert_eq!(r.judge(0, 429, &h, now), Verdict::Limited);
        r.judge(1, 429, &HeaderMap::new(), now);
        // The soonest end of cooling: key 0's 30 s, not key 1's default 60 s.
        assert_eq!(r.pick(Tried::default(), now), Err(NoKey::Cooling(Duration::from_secs(30))));
        assert_eq!(r.pick(Tried::default(), now + Duration::from_secs(30)), Ok(0));
        assert_eq!(r.snapshot(now + Duration::from_secs(61)), [KeyState::Usable, KeyState::Usable]);
    }

    #[test]
    fn each_key_is_tried_once_per_request() {
        let r = ring(3);
        let now = Instant::now();
        let mut tried = Tried::default();
        let mut seen = Vec::new();
        while let Ok(i) = r.pick(tried, now) {
            tried.add(i);
            seen.push(i);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(r.pick(tried, now), Err(NoKey::Disabled));
    }

    #[test]
    fn credentials_go_to_the_presets_targets_only() {
        let r = ring(1);
        let ours = origin("https://api.example.com");
        assert!(r.credential(0, &origin("https://evil.example.com")).is_none());
        assert!(r.credential(0, &origin("http://api.example.com")).is_none(), "another scheme is another origin");
        let c = r.credential(0, &ours).unwrap();
        let (name, value) = c.header_for(&ours).unwrap();
        assert_eq!((name.as_str(), value.as_bytes()), ("authorization", &b"Bearer sk-test-key-number-0"[..]));
        assert!(value.is_sensitive());
        assert!(c.header_for(&origin("https://api.example.com:444")).is_none());
        for shown in [format!("{c:?}"), format!("{r:?}"), format!("{}", r.keys()[0])] {
            assert!(!shown.contains("key-number"), "{shown}");
        }
        assert_eq!(r.keys()[0].masked(), "sk-…er-0");
    }

    #[test]
    fn masks_and_query_keys() {
        assert_eq!(mask("AIzaSyA-0123456789abcdef"), "AIz…cdef");
        assert_eq!(mask("short"), "***");
        assert_eq!(strip_key_param("key=abc").as_deref(), None);
        assert_eq!(strip_key_param("alt=sse&key=abc").as_deref(), Some("alt=sse"));
        assert_eq!(strip_key_param("key=a&alt=sse&key=b&x=%26").as_deref(), Some("alt=sse&x=%26"));
        assert_eq!(strip_key_param("monkey=1").as_deref(), Some("monkey=1"));
        assert_eq!(strip_key_param("").as_deref(), Some(""));
    }
}
