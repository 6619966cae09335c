//! The fetch transport: reqwest (hyper's client, HTTP/2 by ALPN) for the
//! upstreams the socket transport cannot serve. It sends the same
//! policy-built headers; reqwest adds only framing (`host`,
//! `content-length`), never a cookie, proxy, referrer or user-agent of its own.
//!
//! The target check runs in the DNS resolver (names) and before the request
//! (IP literals), so the addresses actually connected are the ones checked.
//!
//! Through an exit (§10) reqwest's own connections are not used: the socket
//! transport's connector opens the way (the same target check, names sent
//! to the exit or resolved here exactly as for every other connection),
//! TLS runs end to end with ALPN `h2`/`http/1.1` and without resumption,
//! and hyper's client speaks over it — one connection per request, so
//! nothing is ever shared across exits or isolation identities.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::body::{Body, Holding};
use crate::dns::Doh;
use crate::policy::target::{Host, Scheme};

use super::connect::{Connector, Egress, TargetCheck};
use super::guard::Guarded;
use super::parse::{ParseError, ResponseHead};
use super::pool::Pool;
use super::{UpstreamError, UpstreamRequest, UpstreamSettings};

/// The fetch transport (connect and per-chunk idle timeouts, never a
/// whole-request one: a long SSE stream must not be cut by a total timer):
/// one client that refuses non-global addresses and
/// one for trusted targets (presets, or everything when the operator allows
/// private targets).
#[derive(Clone)]
pub(crate) struct FetchTransport {
    /// The socket transport's pool: fetch requests take upstream slots too.
    pool: Arc<Pool>,
    checked: reqwest::Client,
    trusted: reqwest::Client,
    settings: UpstreamSettings,
    /// Through exits: the socket transport's connector, and TLS that never
    /// resumes a session.
    connector: Connector,
    exits_tls: tokio_rustls::TlsConnector,
}

/// The resolver refused every address of a name.
#[derive(Debug, thiserror::Error)]
#[error("{host} is not a globally routable address")]
struct TargetRefused {
    host: String,
}

/// Resolves with the system resolver, or DNS over HTTPS when configured,
/// and keeps only permitted addresses (all of them for trusted targets).
struct CheckedResolver {
    check: TargetCheck,
    doh: Option<Arc<Doh>>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (check, doh) = (self.check, self.doh.clone());
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = match &doh {
                Some(doh) => match doh.lookup(&host).await {
                    Ok(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                    Err(e) => return Err(Box::new(e) as Box<dyn StdError + Send + Sync>),
                },
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            match check.admit(&host, found, false) {
                Ok(permitted) => Ok(Box::new(permitted.into_iter()) as Addrs),
                Err(UpstreamError::Forbidden { .. }) => {
                    Err(Box::new(TargetRefused { host }) as Box<dyn StdError + Send + Sync>)
                }
                Err(e) => Err(Box::new(e) as Box<dyn StdError + Send + Sync>),
            }
        })
    }
}

impl FetchTransport {
    /// Builds both clients. `tls` must carry ALPN `h2` and `http/1.1`.
    pub(crate) fn new(
        settings: UpstreamSettings,
        tls: &rustls::ClientConfig,
        own: SocketAddr,
        pool: Arc<Pool>,
        doh: Option<Arc<Doh>>,
        connector: Connector,
    ) -> Result<FetchTransport, reqwest::Error> {
        let build = |checked: bool| {
            let mut b = reqwest::Client::builder()
                .tls_backend_preconfigured(tls.clone())
                .default_headers(HeaderMap::new())
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .referer(false)
                .connect_timeout(settings.connect_timeout)
                .pool_idle_timeout(settings.pool_idle_timeout)
                .tcp_nodelay(true);
            if checked || doh.is_some() {
                let check = TargetCheck { allow_private: !checked, own };
                b = b.dns_resolver(Arc::new(CheckedResolver { check, doh: doh.clone() }));
            }
            b.build()
        };
        let mut unresumed = tls.clone();
        unresumed.resumption = rustls::client::Resumption::disabled();
        let exits_tls = tokio_rustls::TlsConnector::from(Arc::new(unresumed));
        Ok(FetchTransport { pool, checked: build(true)?, trusted: build(false)?, settings, connector, exits_tls })
    }

    /// Sends `req`; the response body streams as it arrives.
    pub(crate) async fn send(&self, req: &UpstreamRequest) -> Result<Response<Body>, UpstreamError> {
        if req.egress != Egress::Direct {
            return self.send_via_exit(req).await;
        }
        let host = req.origin.host.to_string();
        let client = if req.check.allow_private { &self.trusted } else { &self.checked };
        // reqwest does not resolve IP literals: the request's own check, here.
        let literal = match req.origin.host {
            Host::V4(a) => Some(IpAddr::V4(a)),
            Host::V6(a) => Some(IpAddr::V6(a)),
            Host::Name(_) => None,
        };
        if let Some(ip) = literal {
            req.check.admit(&host, [SocketAddr::new(ip, req.origin.port)], true)?;
        }
        let url = format!("{}{}", req.origin, req.path);
        let url = reqwest::Url::parse(&url)
            .map_err(|_| UpstreamError::Fetch { host: host.clone(), reason: "the target is not a valid URL".into() })?;
        let mut request = reqwest::Request::new(req.method.clone(), url);
        *request.headers_mut() = req.headers.clone();
        if let Some((name, value)) = req.credential_header() {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        if !req.body.is_empty() || matches!(req.method, Method::POST | Method::PUT | Method::PATCH) {
            *request.body_mut() = Some(reqwest::Body::from(req.body.clone()));
        }

        // Held until the body is dropped: over HTTP/1.1 each request in
        // flight holds a socket of reqwest's (over HTTP/2 this overcounts).
        let slot = self.pool.slot().await?;
        let sent = tokio::time::timeout(self.settings.response_timeout, client.execute(request)).await;
        let resp = match sent {
            Err(_) => {
                return Err(UpstreamError::HeadTimeout { host, secs: self.settings.response_timeout.as_secs() });
            }
            Ok(Err(e)) => return Err(classify(e, host)),
            Ok(Ok(resp)) => resp,
        };
        let resp: Response<reqwest::Body> = resp.into();
        self.finish(req, host, resp, slot)
    }

    /// Through an exit: a connection of its own (see the module's text).
    async fn send_via_exit(&self, req: &UpstreamRequest) -> Result<Response<Body>, UpstreamError> {
        let host = req.origin.host.to_string();
        let slot = self.pool.slot().await?;
        let (tcp, _) = self.connector.connect(&req.origin, &req.egress, req.check).await?;
        let fail = |reason: String| UpstreamError::Fetch { host: host.clone(), reason };
        let authority = req.origin.host_header();
        let exchange = async {
            if req.origin.scheme == Scheme::Https {
                let name = rustls::pki_types::ServerName::try_from(req.origin.host.to_string())
                    .map_err(|_| fail("the host is not a valid TLS name".into()))?;
                let tls = self
                    .exits_tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls { host: host.clone(), reason: e.to_string() })?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                exchange(tls, h2, req, &authority).await.map_err(fail)
            } else {
                exchange(tcp, false, req, &authority).await.map_err(fail)
            }
        };
        let (resp, sender) = match tokio::time::timeout(self.settings.response_timeout, exchange).await {
            Err(_) => {
                return Err(UpstreamError::HeadTimeout { host, secs: self.settings.response_timeout.as_secs() });
            }
            Ok(result) => result?,
        };
        self.finish(req, host, resp, (slot, sender))
    }

    /// The checks both ways share, and the body with its idle timer and
    /// whatever must live as long as it (`keep`).
    fn finish<B, K>(
        &self,
        req: &UpstreamRequest,
        host: String,
        resp: Response<B>,
        keep: K,
    ) -> Result<Response<Body>, UpstreamError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
        K: Unpin + Send + 'static,
    {
        // What the socket transport refuses, this one refuses too: hyper's
        // client is lenient (it reads past CL+TE, passes `chunked, identity`,
        // takes heads far over our limit, hands on a 101).
        let (parts, body) = resp.into_parts();
        let head = ResponseHead { status: parts.status, version: parts.version, headers: parts.headers };
        let limit = self.settings.max_response_head_bytes;
        if head.wire_len() > limit {
            return Err(UpstreamError::Parse { host, source: ParseError::HeadTooLarge { limit } });
        }
        if head.version < Version::HTTP_2 {
            head.framing(&req.method).map_err(|source| UpstreamError::Parse { host: host.clone(), source })?;
        } else if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::Parse { host, source: ParseError::Framing("101 over HTTP/2") });
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        *resp.extensions_mut() = parts.extensions;
        let idle = self.settings.idle_timeout;
        Ok(resp.map(|body| Holding { inner: Guarded::new(body, idle), _guard: keep }.boxed_unsync()))
    }
}

/// What keeps a connection of its own open while its answer streams.
type Sender = Box<dyn std::any::Any + Send>;

/// One request over a fresh connection with hyper's client: HTTP/2 when
/// ALPN chose it, else HTTP/1.1 with `host` (HTTP/2 takes `:authority`
/// from the URI).
async fn exchange<S>(
    stream: S,
    h2: bool,
    req: &UpstreamRequest,
    authority: &str,
) -> Result<(Response<hyper::body::Incoming>, Sender), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut request = http::Request::new(http_body_util::Full::new(req.body.clone()));
    *request.method_mut() = req.method.clone();
    *request.headers_mut() = req.headers.clone();
    if let Some((name, value)) = req.credential_header() {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let uri = if h2 { format!("{}{}", req.origin, req.path) } else { req.path.clone() };
    *request.uri_mut() = uri.parse().map_err(|_| "the target is not a valid URL".to_owned())?;
    let hyper_failed = |e: hyper::Error| root_cause(&e);
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(hyper_failed)?;
        tokio::spawn(conn);
        let resp = sender.send_request(request).await.map_err(hyper_failed)?;
        Ok((resp, Box::new(sender)))
    } else {
        let host = http::HeaderValue::from_str(authority).map_err(|_| "the host is not a valid header".to_owned())?;
        request.headers_mut().insert(http::header::HOST, host);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(hyper_failed)?;
        tokio::spawn(conn);
        let resp = sender.send_request(request).await.map_err(hyper_failed)?;
        Ok((resp, Box::new(sender)))
    }
}

/// The innermost message of an error chain.
fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut source = Some(e);
    let mut root = String::new();
    while let Some(s) = source {
        root = s.to_string();
        source = s.source();
    }
    root
}

/// Maps a reqwest error to the transport error, never quoting the URL (its
/// query may hold a key).
fn classify(e: reqwest::Error, host: String) -> UpstreamError {
    let e = e.without_url();
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    let mut root = String::new();
    while let Some(s) = source {
        if s.downcast_ref::<TargetRefused>().is_some() {
            return UpstreamError::Forbidden { host };
        }
        root = s.to_string();
        source = s.source();
    }
    if e.is_connect() && e.is_timeout() {
        return UpstreamError::ConnectTimeout { host };
    }
    if e.is_connect() {
        return UpstreamError::Connect { host, reason: root };
    }
    UpstreamError::Fetch { host, reason: root }
}
