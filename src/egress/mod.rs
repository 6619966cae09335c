//! Egress (SPEC §10): the named ways a connection leaves this machine —
//! a SOCKS5 proxy (Tor), an HTTP proxy reached with CONNECT, or a direct
//! connection from a chosen source address — and which one a request takes.
//!
//! An exit that fails fails the request (502 naming the exit and the
//! proxy's reply): there is no silent way around it. The proxies are the
//! operator's and are not target-checked; the destinations behind them are,
//! as far as veilgate can see them (§10 "names at the exit").

pub mod http_connect;
pub mod socks5;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// How SOCKS5 credentials are chosen per connection (Tor's
/// `IsolateSOCKSAuth` builds a circuit per distinct pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolate {
    None,
    /// One identity per caller (derived from its name, never its token).
    Client,
    /// Fresh credentials for every request.
    Request,
}

/// Where a destination's name is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// Sent to the exit as a name (ATYP 3, `CONNECT host:port`): no local
    /// DNS query at all.
    Exit,
    /// Resolved here, checked, and sent as an address.
    Local,
}

/// What an exit is.
#[derive(Clone, PartialEq, Eq)]
pub enum ExitKind {
    Socks5 {
        /// `host:port` of the proxy.
        proxy: String,
        /// RFC 1929 username and password.
        credentials: Option<(String, String)>,
        isolate: Isolate,
        resolve: Resolve,
    },
    HttpConnect {
        proxy: String,
        /// `user:pass`, sent as `proxy-authorization: Basic …`.
        authorization: Option<String>,
        resolve: Resolve,
    },
    Bind {
        source: IpAddr,
    },
}

impl ExitKind {
    pub fn name(&self) -> &'static str {
        match self {
            ExitKind::Socks5 { .. } => "socks5",
            ExitKind::HttpConnect { .. } => "http_connect",
            ExitKind::Bind { .. } => "bind",
        }
    }

    /// The proxy or source address, as configured (no credentials).
    pub fn address(&self) -> String {
        match self {
            ExitKind::Socks5 { proxy, .. } | ExitKind::HttpConnect { proxy, .. } => proxy.clone(),
            ExitKind::Bind { source } => source.to_string(),
        }
    }
}

impl fmt::Debug for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials.
        write!(f, "{}({})", self.name(), self.address())
    }
}

/// One `[egress.NAME]`, and when it last failed.
#[derive(Debug)]
pub struct Exit {
    pub name: String,
    pub kind: ExitKind,
    /// Unix ms of the last failed connection through it (0: none), and of
    /// the last success.
    last_failure_ms: AtomicI64,
    last_success_ms: AtomicI64,
    /// Connections through it, that worked and that failed.
    pub connected: AtomicU64,
    pub failed: AtomicU64,
}

impl Exit {
    pub fn new(name: String, kind: ExitKind) -> Exit {
        Exit {
            name,
            kind,
            last_failure_ms: AtomicI64::new(0),
            last_success_ms: AtomicI64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Records a connection attempt through this exit.
    pub fn record(&self, ok: bool, now_ms: i64) {
        let (slot, count) =
            if ok { (&self.last_success_ms, &self.connected) } else { (&self.last_failure_ms, &self.failed) };
        slot.store(now_ms, Ordering::Relaxed);
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// `failing` while the last attempt, within 60 s, failed; else `active`.
    pub fn status(&self, now_ms: i64) -> &'static str {
        let failed = self.last_failure_ms.load(Ordering::Relaxed);
        let ok = self.last_success_ms.load(Ordering::Relaxed);
        if failed > ok && now_ms - failed <= 60_000 { "failing" } else { "active" }
    }
}

/// The seed api-llm-cloud's topology document of `exits` (file order).
pub fn topology(exits: &[Arc<Exit>], generated_at_s: u64, now_ms: i64) -> serde_json::Value {
    // The id changes exactly when names, kinds, addresses or order do.
    let mut identity = String::new();
    for e in exits {
        identity.push_str(&format!("{}\n{}\n{}\n", e.name, e.kind.name(), e.kind.address()));
    }
    let id = crate::client::to_hex(&crate::client::sha256(identity.as_bytes()));
    let proxies: Vec<_> = exits
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({ "id": i, "name": e.name, "kind": e.kind.name(), "status": e.status(now_ms) }))
        .collect();
    serde_json::json!({
        "schemaVersion": 1,
        "topologyId": format!("sha256:{id}"),
        "topologyGeneratedAt": generated_at_s,
        "workerCount": exits.len(),
        "proxies": proxies,
    })
}

/// `veilgate_egress_connections_total{egress,result}` in the exposition
/// format.
pub fn render_metrics(exits: &[Arc<Exit>]) -> String {
    use std::fmt::Write as _;
    if exits.is_empty() {
        return String::new();
    }
    let mut out = String::from("# HELP veilgate_egress_connections Connections through each exit, by result.\n");
    out.push_str("# TYPE veilgate_egress_connections counter\n");
    for e in exits {
        for (result, n) in [("ok", &e.connected), ("failed", &e.failed)] {
            let _ = writeln!(
                out,
                "veilgate_egress_connections_total{{egress=\"{}\",result=\"{result}\"}} {}",
                e.name,
                n.load(Ordering::Relaxed)
            );
        }
    }
    out
}

/// How a request picks among several exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitChoice {
    /// A stable exit per upstream host (a hash of the host).
    PerHost,
    RoundRobin,
    Random,
}

/// The exits a route may take (`[upstream] egress`, a preset's `egress`):
/// empty is direct.
#[derive(Debug)]
pub struct ExitSet {
    pub exits: Vec<Option<Arc<Exit>>>,
    pub choice: ExitChoice,
    next: AtomicUsize,
}

impl ExitSet {
    /// `None` entries are `direct`.
    pub fn new(exits: Vec<Option<Arc<Exit>>>, choice: ExitChoice) -> ExitSet {
        ExitSet { exits, choice, next: AtomicUsize::new(0) }
    }

    pub fn direct() -> ExitSet {
        ExitSet::new(vec![None], ExitChoice::PerHost)
    }

    /// The exit of a request to `host`; `asked` is the client's exit number
    /// (`x-veilgate-exit`, the numeric route), taken modulo the count.
    pub fn pick(&self, host: &str, asked: Option<u64>) -> Option<&Arc<Exit>> {
        let n = self.exits.len();
        if n <= 1 {
            return self.exits.first().and_then(Option::as_ref);
        }
        let i = match (asked, self.choice) {
            (Some(k), _) => (k % n as u64) as usize,
            (None, ExitChoice::PerHost) => (fnv1a(host.as_bytes()) % n as u64) as usize,
            (None, ExitChoice::RoundRobin) => self.next.fetch_add(1, Ordering::Relaxed) % n,
            (None, ExitChoice::Random) => rand::random_range(0..n),
        };
        self.exits[i].as_ref()
    }
}

/// FNV-1a: stable across runs and machines, so a host keeps its exit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(name: &str) -> Option<Arc<Exit>> {
        Some(Arc::new(Exit::new(name.into(), ExitKind::Bind { source: "127.0.0.1".parse().unwrap() })))
    }

    #[test]
    fn picks() {
        let set = ExitSet::new(vec![exit("a"), exit("b"), exit("c")], ExitChoice::PerHost);
        let name = |e: Option<&Arc<Exit>>| e.map(|e| e.name.clone());
        let first = name(set.pick("api.openai.com", None));
        for _ in 0..10 {
            assert_eq!(name(set.pick("api.openai.com", None)), first, "a host keeps its exit");
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|i| name(set.pick(&format!("host{i}.example"), None))).collect();
        assert_eq!(spread.len(), 3, "hosts spread over the exits");
        assert_eq!(name(set.pick("x", Some(4))).as_deref(), Some("b"), "N mod count");
        let rr = ExitSet::new(vec![exit("a"), None], ExitChoice::RoundRobin);
        let seq: Vec<_> = (0..4).map(|_| name(rr.pick("x", None))).collect();
        assert_eq!(seq, [Some("a".into()), None, Some("a".into()), None]);
        assert!(ExitSet::direct().pick("x", Some(7)).is_none());
    }

    #[test]
    fn status_and_debug() {
        let e = Exit::new(
            "vpn".into(),
            ExitKind::Socks5 {
                proxy: "127.0.0.1:1080".into(),
                credentials: Some(("me".into(), "hunter2".into())),
                isolate: Isolate::None,
                resolve: Resolve::Exit,
            },
        );
        assert_eq!(e.status(1_000_000), "active");
        e.record(false, 1_000_000);
        assert_eq!(e.status(1_030_000), "failing");
        assert_eq!(e.status(1_061_000), "active", "only within 60 s");
        e.record(true, 1_040_000);
        assert_eq!(e.status(1_041_000), "active");
        let shown = format!("{e:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("\"me\""), "{shown}");
    }
}
