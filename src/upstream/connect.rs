//! The connector: target + egress → TCP stream + peer address. Used by both
//! transports and by tunnels, so that the target check runs on the address
//! actually connected (a name that resolves to a private address is refused
//! however it is reached; DNS rebinding cannot slip past it).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::policy::target::{Host, Origin, is_global};

use super::UpstreamError;

/// How a connection leaves this machine. Only direct today; SOCKS5 exits
/// (resolving the name at the exit) slot in here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Egress {
    #[default]
    Direct,
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

/// Opens TCP connections.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    pub connect_timeout: Duration,
}

impl Connector {
    /// Resolves `origin`, keeps the addresses `check` permits, and connects
    /// to the first that answers within `connect_timeout` (for all tries
    /// together). The stream has `TCP_NODELAY` set.
    pub(crate) async fn connect(
        &self,
        origin: &Origin,
        _egress: &Egress,
        check: TargetCheck,
    ) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let host = origin.host.to_string();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let addrs: Vec<SocketAddr> = match &origin.host {
            Host::V4(a) => vec![SocketAddr::new(IpAddr::V4(*a), origin.port)],
            Host::V6(a) => vec![SocketAddr::new(IpAddr::V6(*a), origin.port)],
            Host::Name(name) => {
                let lookup = tokio::net::lookup_host((name.as_str(), origin.port));
                match tokio::time::timeout_at(deadline, lookup).await {
                    Err(_) => return Err(UpstreamError::ConnectTimeout { host }),
                    Ok(Err(_)) => return Err(UpstreamError::Resolve { host }),
                    Ok(Ok(it)) => it.collect(),
                }
            }
        };
        let permitted = check.admit(&host, addrs, true)?;
        let mut last: Option<io::Error> = None;
        for addr in permitted {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Err(_) => return Err(UpstreamError::ConnectTimeout { host }),
                Ok(Ok(stream)) => {
                    // Nagle would hold small writes (an SSE event, a head).
                    stream
                        .set_nodelay(true)
                        .map_err(|e| UpstreamError::Connect { host: host.clone(), reason: e.kind().to_string() })?;
                    return Ok((stream, addr));
                }
                Ok(Err(e)) => last = Some(e),
            }
        }
        let reason = last.map(|e| e.kind().to_string()).unwrap_or_default();
        Err(UpstreamError::Connect { host, reason })
    }
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
