//! DNS for veilgate's own lookups (SPEC §10): with `[dns] resolver =
//! "doh"`, upstream names are resolved by DNS over HTTPS (RFC 8484) —
//! A and AAAA queries POSTed through veilgate's own socket transport to the
//! first DoH server that answers — and never by the system resolver.
//! Answers are cached for `min(TTL, cache_max_ttl_s)`; the caller applies
//! the target check to them.

pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::BodyExt;

use crate::policy::target::Origin;
use crate::upstream::connect::{Egress, TargetCheck};
use crate::upstream::{Preference, SocketTransport, UpstreamRequest};

/// The largest DNS message read from a DoH server.
pub const MAX_MESSAGE: usize = 65_535;

/// Why a name could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{host} does not exist (NXDOMAIN)")]
    NxDomain { host: String },
    #[error("{host} has no A or AAAA record")]
    NoAddress { host: String },
    #[error("DNS over HTTPS for {host} failed: {reason}")]
    Doh { host: String, reason: String },
}

/// A DoH server: where its queries go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DohServer {
    pub origin: Origin,
    /// The path (`/dns-query`).
    pub path: String,
}

/// The DoH resolver: its own socket transport (so its connections never
/// need a lookup themselves: servers are IP literals or at their
/// bootstrap addresses), its egress, and the cache.
pub struct Doh {
    servers: Vec<DohServer>,
    transport: SocketTransport,
    egress: Egress,
    check: TargetCheck,
    max_ttl: Duration,
    cache: Mutex<HashMap<String, (Vec<IpAddr>, Instant)>>,
}

impl std::fmt::Debug for Doh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Doh({} servers)", self.servers.len())
    }
}

impl Doh {
    /// `check` admits the servers (the operator's: not target-checked
    /// beyond veilgate's own address).
    pub fn new(
        servers: Vec<DohServer>,
        transport: SocketTransport,
        egress: Egress,
        check: TargetCheck,
        max_ttl: Duration,
    ) -> Doh {
        Doh { servers, transport, egress, check, max_ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// The addresses of `host` (A and AAAA), from the cache or the servers.
    /// Boxed: the resolver's transport has a connector too, and the future
    /// types would otherwise contain themselves.
    pub fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, DnsError>> + Send + 'a>> {
        Box::pin(self.resolve(host))
    }

    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let key = host.to_ascii_lowercase();
        if let Some((addrs, until)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && *until > Instant::now()
        {
            return Ok(addrs.clone());
        }
        let fail = |reason: String| DnsError::Doh { host: host.to_owned(), reason };
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        for kind in [wire::Kind::A, wire::Kind::Aaaa] {
            let query = wire::query(&key, kind).map_err(|e| fail(e.to_string()))?;
            let answer = self.ask(Bytes::from(query)).await.map_err(fail)?;
            match wire::answers(&answer) {
                Ok(found) => {
                    for (addr, t) in found {
                        ttl = ttl.min(t);
                        addrs.push(addr);
                    }
                }
                Err(wire::WireError::NxDomain) => return Err(DnsError::NxDomain { host: host.to_owned() }),
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        if addrs.is_empty() {
            return Err(DnsError::NoAddress { host: host.to_owned() });
        }
        let keep = self.max_ttl.min(Duration::from_secs(u64::from(ttl)));
        if !keep.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (_, until)| *until > Instant::now());
            cache.insert(key, (addrs.clone(), Instant::now() + keep));
        }
        Ok(addrs)
    }

    /// Sends one DNS message to the first server that answers it with a
    /// DNS message (the next on any failure); the answer's bytes.
    pub async fn ask(&self, message: Bytes) -> Result<Bytes, String> {
        let mut last = "no DoH server is configured".to_owned();
        for server in &self.servers {
            match self.ask_one(server, message.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(reason) => {
                    tracing::warn!(server = %server.origin, %reason, "DoH server failed; trying the next");
                    last = reason;
                }
            }
        }
        Err(last)
    }

    async fn ask_one(&self, server: &DohServer, message: Bytes) -> Result<Bytes, String> {
        let dns = HeaderValue::from_static("application/dns-message");
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, dns.clone());
        headers.insert(header::ACCEPT, dns);
        let req = UpstreamRequest {
            method: Method::POST,
            origin: server.origin.clone(),
            path: server.path.clone(),
            headers,
            body: message,
            check: self.check,
            transport: Preference::SocketFirst,
            egress: self.egress.clone(),
            credential: None,
        };
        let resp = self.transport.send(&req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", server.origin, resp.status().as_u16()));
        }
        let typed =
            resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/dns-message");
        if !typed {
            return Err(format!("{} did not answer with a DNS message", server.origin));
        }
        let mut body = resp.into_body();
        let mut answer = Vec::new();
        while let Some(frame) = body.frame().await {
            let cut = || format!("{}'s answer was cut or over {MAX_MESSAGE} bytes", server.origin);
            let Ok(data) = frame.map_err(|e| e.to_string()).map_err(|_| cut())?.into_data() else { continue };
            if answer.len() + data.len() > MAX_MESSAGE {
                return Err(cut());
            }
            answer.extend_from_slice(&data);
        }
        Ok(Bytes::from(answer))
    }
}
