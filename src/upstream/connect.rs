//! The connector: target + egress → TCP stream + peer address. Used by both
//! transports and by tunnels, so that the target check runs on the address
//! actually connected (a name that resolves to a private address is refused
//! however it is reached; DNS rebinding cannot slip past it).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpSocket, TcpStream};

use crate::dns::Doh;
use crate::egress::{Exit, ExitKind, Isolate, Resolve, http_connect, socks5};
use crate::policy::target::{Host, Origin, is_global};
use crate::usage::time::unix_ms;

use super::UpstreamError;

/// How a connection leaves this machine: directly, or through a named
/// exit of `[egress.*]` with the isolation identity of this connection
/// (its SOCKS5 credentials when the exit isolates). Pooled connections
/// are keyed by it, so none is shared across exits or identities.
#[derive(Clone, Debug, Default)]
pub enum Egress {
    #[default]
    Direct,
    Via {
        exit: Arc<Exit>,
        identity: Option<Arc<str>>,
    },
}

impl Egress {
    /// `direct`, or the exit's name (error messages, metrics).
    pub fn name(&self) -> &str {
        match self {
            Egress::Direct => "direct",
            Egress::Via { exit, .. } => &exit.name,
        }
    }
}

impl PartialEq for Egress {
    fn eq(&self, other: &Egress) -> bool {
        match (self, other) {
            (Egress::Direct, Egress::Direct) => true,
            // By what the exit is, not which allocation: a reload that
            // keeps an exit keeps its pooled connections.
            (Egress::Via { exit: a, identity: x }, Egress::Via { exit: b, identity: y }) => {
                (Arc::ptr_eq(a, b) || (a.name == b.name && a.kind == b.kind)) && x == y
            }
            _ => false,
        }
    }
}

impl Eq for Egress {}

impl std::hash::Hash for Egress {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Egress::Direct => 0u8.hash(state),
            Egress::Via { exit, identity } => {
                exit.name.hash(state);
                identity.hash(state);
            }
        }
    }
}

/// Which addresses may be connected to.
#[derive(Clone, Copy, Debug)]
pub struct TargetCheck {
    /// Operator-configured targets (presets) and `allow_private_targets`.
    pub allow_private: bool,
    /// veilgate's own listen address, refused unless private targets are allowed.
    pub own: SocketAddr,
}

impl TargetCheck {
    /// True when the check refuses anything (private targets are not allowed).
    pub fn is_strict(&self) -> bool {
        !self.allow_private
    }

    /// True when connecting to `ip` (on `port`, when known) is allowed: a
    /// globally routable address that is not veilgate's own listen address.
    /// Without the port (a resolver only knows the name) the own address's
    /// IP is refused on any port.
    pub fn permits(&self, ip: IpAddr, port: Option<u16>) -> bool {
        if self.allow_private {
            return true;
        }
        // With a wildcard listen address our public addresses are unknown
        // here; loopback and private ones are refused by `is_global` anyway.
        let own = !self.own.ip().is_unspecified() && ip == self.own.ip() && port.is_none_or(|p| p == self.own.port());
        is_global(ip) && !own
    }

    /// The addresses of `host` that may be connected to, in order: the one
    /// target check of every path (socket connector, fetch resolver,
    /// fetch's IP literals, tunnels). None found at all → `Resolve`; none
    /// permitted → `Forbidden`.
    pub fn admit(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
        port_known: bool,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        let mut found = false;
        let permitted: Vec<SocketAddr> = addrs
            .into_iter()
            .inspect(|_| found = true)
            .filter(|a| self.permits(a.ip(), port_known.then_some(a.port())))
            .collect();
        match (found, permitted.is_empty()) {
            (false, _) => Err(UpstreamError::Resolve { host: host.to_owned() }),
            (true, true) => Err(UpstreamError::Forbidden { host: host.to_owned() }),
            (true, false) => Ok(permitted),
        }
    }
}

/// Where the connector finds the addresses of a name.
#[derive(Clone, Debug, Default)]
pub(crate) enum Names {
    #[default]
    System,
    /// `[dns] resolver = "doh"`: never the system resolver.
    Doh(Arc<Doh>),
    /// `[dns] bootstrap`, for the DoH resolver's own connections: every
    /// name (a DoH server's) is at these addresses, and nothing is asked.
    Fixed(Arc<[IpAddr]>),
}

/// Opens TCP connections.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    pub connect_timeout: Duration,
    pub names: Names,
}

impl Connector {
    /// A TCP stream to `origin` through `egress`, within `connect_timeout`
    /// for everything (resolving, the proxy's handshake). Directly: the
    /// name is resolved and the first permitted address that answers is
    /// used. Through an exit, see [`Connector::via`]. The stream has
    /// `TCP_NODELAY` set.
    pub(crate) async fn connect(
        &self,
        origin: &Origin,
        egress: &Egress,
        check: TargetCheck,
    ) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        match egress {
            Egress::Direct => self.direct(origin, check, None, deadline).await,
            Egress::Via { exit, identity } => {
                let result = match &exit.kind {
                    ExitKind::Bind { source } => self.direct(origin, check, Some(*source), deadline).await,
                    _ => self.via(origin, exit, identity.as_deref(), check, deadline).await,
                };
                exit.record(result.is_ok(), unix_ms(SystemTime::now()));
                result
            }
        }
    }

    /// The permitted addresses of `origin`, resolved here.
    async fn resolve(
        &self,
        origin: &Origin,
        check: TargetCheck,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        let host = origin.host.to_string();
        let addrs: Vec<SocketAddr> = match &origin.host {
            Host::V4(a) => vec![SocketAddr::new(IpAddr::V4(*a), origin.port)],
            Host::V6(a) => vec![SocketAddr::new(IpAddr::V6(*a), origin.port)],
            Host::Name(name) => match &self.names {
                Names::Fixed(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, origin.port)).collect(),
                Names::Doh(doh) => match tokio::time::timeout_at(deadline, doh.lookup(name)).await {
                    Err(_) => return Err(UpstreamError::ConnectTimeout { host }),
                    Ok(Err(e)) => return Err(UpstreamError::Dns { reason: e.to_string() }),
                    Ok(Ok(ips)) => ips.into_iter().map(|ip| SocketAddr::new(ip, origin.port)).collect(),
                },
                Names::System => {
                    let lookup = tokio::net::lookup_host((&**name, origin.port));
                    match tokio::time::timeout_at(deadline, lookup).await {
                        Err(_) => return Err(UpstreamError::ConnectTimeout { host }),
                        Ok(Err(_)) => return Err(UpstreamError::Resolve { host }),
                        Ok(Ok(it)) => it.collect(),
                    }
                }
            },
        };
        check.admit(&host, addrs, true)
    }

    async fn direct(
        &self,
        origin: &Origin,
        check: TargetCheck,
        source: Option<IpAddr>,
        deadline: tokio::time::Instant,
    ) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let host = origin.host.to_string();
        let permitted = self.resolve(origin, check, deadline).await?;
        let mut last: Option<io::Error> = None;
        for addr in permitted {
            let attempt = async {
                match source {
                    None => TcpStream::connect(addr).await,
                    Some(source) => {
                        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                        socket.bind(SocketAddr::new(source, 0))?;
                        socket.connect(addr).await
                    }
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(UpstreamError::ConnectTimeout { host }),
                Ok(Ok(stream)) => return nodelay(stream, &host).map(|s| (s, addr)),
                Ok(Err(e)) => last = Some(e),
            }
        }
        let reason = last.map(|e| e.kind().to_string()).unwrap_or_default();
        Err(UpstreamError::Connect { host, reason })
    }

    /// Through a SOCKS5 or CONNECT proxy. IP-literal targets are checked
    /// before the proxy is asked; a name goes to the exit unresolved
    /// (`resolve = "exit"`, no local DNS query), or is resolved and
    /// checked here and sent as an address (`resolve = "local"`). Any
    /// failure is the exit's 502 — never a direct connection.
    async fn via(
        &self,
        origin: &Origin,
        exit: &Exit,
        identity: Option<&str>,
        check: TargetCheck,
        deadline: tokio::time::Instant,
    ) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let fail = |reason: String| UpstreamError::Egress { egress: exit.name.clone(), reason };
        let (proxy, resolve) = match &exit.kind {
            ExitKind::Socks5 { proxy, resolve, .. } | ExitKind::HttpConnect { proxy, resolve, .. } => (proxy, *resolve),
            ExitKind::Bind { .. } => return Err(fail("not a proxy".into())),
        };
        let local;
        let dest = match (&origin.host, resolve) {
            (Host::Name(name), Resolve::Exit) => socks5::Dest::Name(name),
            _ => {
                // An address: checked before the proxy is asked for it.
                local = self.resolve(origin, check, deadline).await?[0].ip();
                match local {
                    IpAddr::V4(a) => socks5::Dest::V4(a),
                    IpAddr::V6(a) => socks5::Dest::V6(a),
                }
            }
        };
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(proxy.as_str())).await {
            Err(_) => return Err(fail(format!("the proxy {proxy} did not answer in time"))),
            Ok(Err(e)) => return Err(fail(format!("cannot reach the proxy {proxy}: {}", e.kind()))),
            Ok(Ok(s)) => s,
        };
        let peer = stream.peer_addr().map_err(|e| fail(e.kind().to_string()))?;
        let mut stream = nodelay(stream, &origin.host.to_string())?;
        let handshake = async {
            match &exit.kind {
                ExitKind::Socks5 { credentials, isolate, .. } => {
                    let creds = match (isolate, identity) {
                        (Isolate::None, _) | (_, None) => {
                            credentials.as_ref().map(|(u, p)| (u.as_bytes(), p.as_bytes()))
                        }
                        (_, Some(id)) => Some((id.as_bytes(), id.as_bytes())),
                    };
                    socks5::handshake(&mut stream, creds, dest, origin.port).await.map_err(|e| e.to_string())
                }
                ExitKind::HttpConnect { authorization, .. } => {
                    let authority = match dest {
                        socks5::Dest::Name(n) => format!("{n}:{}", origin.port),
                        socks5::Dest::V4(a) => format!("{a}:{}", origin.port),
                        socks5::Dest::V6(a) => format!("[{a}]:{}", origin.port),
                    };
                    let basic = authorization.as_ref().map(|a| {
                        use base64::Engine;
                        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(a))
                    });
                    http_connect::handshake(&mut stream, &authority, basic.as_deref()).await.map_err(|e| e.to_string())
                }
                ExitKind::Bind { .. } => Ok(()),
            }
        };
        match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => Err(fail(format!("the proxy {proxy} did not finish its handshake in time"))),
            Ok(Err(reason)) => Err(fail(reason)),
            Ok(Ok(())) => Ok((stream, peer)),
        }
    }
}

/// Nagle would hold small writes (an SSE event, a head).
fn nodelay(stream: TcpStream, host: &str) -> Result<TcpStream, UpstreamError> {
    stream
        .set_nodelay(true)
        .map_err(|e| UpstreamError::Connect { host: host.to_owned(), reason: e.kind().to_string() })?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_private_and_own_address() {
        let own: SocketAddr = "8.8.4.4:8080".parse().unwrap();
        let strict = TargetCheck { allow_private: false, own };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!strict.permits(ip("127.0.0.1"), Some(80)));
        assert!(!strict.permits(ip("169.254.169.254"), Some(80)));
        assert!(!strict.permits(ip("8.8.4.4"), Some(8080)), "own listen address");
        assert!(!strict.permits(ip("8.8.4.4"), None), "own IP when the port is not known");
        assert!(strict.permits(ip("8.8.4.4"), Some(443)));
        assert!(strict.permits(ip("8.8.8.8"), None));
        let open = TargetCheck { allow_private: true, own };
        assert!(open.permits(ip("127.0.0.1"), Some(80)));
        let addrs = |list: &[&str]| list.iter().map(|a| a.parse::<SocketAddr>().unwrap()).collect::<Vec<_>>();
        assert!(matches!(strict.admit("h", addrs(&[]), true), Err(UpstreamError::Resolve { .. })));
        assert!(matches!(strict.admit("h", addrs(&["10.0.0.1:443"]), true), Err(UpstreamError::Forbidden { .. })));
        let mixed = strict.admit("h", addrs(&["10.0.0.1:443", "8.8.8.8:443"]), true).unwrap();
        assert_eq!(mixed, addrs(&["8.8.8.8:443"]), "only the permitted addresses, in order");
    }
}
