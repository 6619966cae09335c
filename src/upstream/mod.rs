//! The socket transport: veilgate's own HTTP/1.1 client over its own TCP
//! (and TLS) connections, writing exactly the bytes of [`encode`] and
//! reading responses with the sans-IO [`parse`] and [`chunked`] modules.
//!
//! This module does IO and decides nothing: which headers leave is the
//! policy's decision, where they go is routing's.

pub(crate) mod challenge;
pub(crate) mod choose;
pub mod chunked;
pub(crate) mod connect;
pub(crate) mod encode;
pub(crate) mod fetch;
pub(crate) mod guard;
pub mod parse;
pub(crate) mod pool;
pub(crate) mod tls;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use http_body_util::BodyExt;

use crate::body::{Body, BoxError};
use crate::keys::Credential;
use crate::policy::target::{Origin, Scheme};

use self::chunked::{BodyDecoder, DecodeError};
use self::connect::{Connector, Egress, Names, TargetCheck};
use self::encode::COALESCE_BODY_BYTES;
use self::guard::Guarded;
use self::parse::{Framing, ParseError, ResponseHead, parse_head};
use self::pool::{Pool, PoolKey, Slot, SlotLimit};

/// Read buffer growth step, and the first read size of a body.
const READ_CHUNK: usize = 16 * 1024;
/// A body whose reads keep filling the buffer (a bulk download) reads up
/// to this much per syscall; one that trickles (SSE) stays at `READ_CHUNK`.
const MAX_READ: usize = 256 * 1024;
/// The largest read buffer a pooled connection keeps for its next use.
const SPARE_BYTES: usize = 4 * READ_CHUNK;

/// A failure of the socket transport, classified by when it happened: only
/// failures before the request was completely written may be retried on
/// another transport ([`UpstreamError::is_before_write`]).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}")]
    Resolve { host: String },
    #[error("{host} is not a globally routable address (upstream.allow_private_targets is off)")]
    Forbidden { host: String },
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("connecting to {host} timed out")]
    ConnectTimeout { host: String },
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("writing the request to {host} failed: {reason}")]
    Write { host: String, reason: String },
    #[error("no response head from {host} within {secs} s")]
    HeadTimeout { host: String, secs: u64 },
    #[error("{host} closed the connection before sending a response")]
    Closed { host: String },
    #[error("reading the response from {host} failed: {reason}")]
    Read { host: String, reason: String },
    #[error("{host}: {source}")]
    Parse { host: String, source: ParseError },
    #[error("all {limit} upstream connections are busy (limits.max_upstream_connections)")]
    Saturated { limit: usize },
    #[error("fetch from {host} failed: {reason}")]
    Fetch { host: String, reason: String },
    /// DNS over HTTPS could not resolve a name (§10).
    #[error("{reason}")]
    Dns { reason: String },
    /// A stream's first event did not come within `first_token_timeout_ms`
    /// (§13): the attempt was abandoned.
    #[error("no first event from {host} within {ms} ms (first_token_timeout_ms)")]
    FirstToken { host: String, ms: u64 },
    /// The egress failed (§10): never retried around it, never direct.
    #[error("egress {egress}: {reason}")]
    Egress { egress: String, reason: String },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Forbidden { .. } => StatusCode::FORBIDDEN,
            UpstreamError::HeadTimeout { .. } | UpstreamError::FirstToken { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Saturated { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// True when the request never completely reached the upstream, so
    /// sending it again (through the fetch transport) cannot bill twice.
    pub fn is_before_write(&self) -> bool {
        matches!(
            self,
            UpstreamError::Resolve { .. }
                | UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Write { .. }
        )
    }
}

/// What a body stream can fail with after the response head was sent.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("upstream read failed: {0}")]
    Read(io::ErrorKind),
}

/// Which transports may carry a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    /// The socket transport, and fetch only as the fallback of SPEC §4.
    SocketFirst,
    /// The fetch transport only (`force_fetch`, `force_fetch_default`).
    FetchOnly,
}

/// One request for an upstream, already shaped by routing and policy.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    pub origin: Origin,
    /// Path and query, byte for byte.
    pub path: String,
    /// End-to-end headers from the policy (no framing).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub check: TargetCheck,
    pub transport: Preference,
    /// How the connection leaves this machine.
    pub egress: Egress,
    /// A held provider key (§12), written only on a request to the origin
    /// it was made for.
    pub credential: Option<Credential>,
}

impl UpstreamRequest {
    /// The held key's header for this request: `None` unless the
    /// credential was made for this request's origin. The transports write
    /// a key only through this.
    pub fn credential_header(&self) -> Option<(&HeaderName, &HeaderValue)> {
        self.credential.as_ref()?.header_for(&self.origin)
    }
}

/// Timeouts and limits of the upstream side, one copy for both transports.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub max_response_head_bytes: usize,
    /// Upstream sockets open at once (`limits.max_upstream_connections`).
    pub max_connections: usize,
}

/// The socket transport.
#[derive(Clone)]
pub struct SocketTransport {
    connector: Connector,
    tls: TlsConnector,
    /// For connections through an exit: the same roots, but no TLS session
    /// is stored or resumed, so no ticket links two exits or identities.
    tls_through_exits: TlsConnector,
    pool: Arc<Pool>,
    settings: UpstreamSettings,
}

/// How one exchange on one connection ended, when it did not succeed.
enum ExchangeError {
    /// A reused connection turned out dead before the upstream could have
    /// acted on the request: it may be sent again on a fresh connection.
    Stale,
    Failed(UpstreamError),
}

impl SocketTransport {
    /// Must be called inside a Tokio runtime (the pool's reaper is spawned).
    pub fn new(settings: UpstreamSettings, tls: Arc<rustls::ClientConfig>) -> SocketTransport {
        let limit = SlotLimit { max: settings.max_connections, wait: settings.connect_timeout };
        let pool = Pool::new(settings.pool_idle_timeout, limit);
        pool.spawn_reaper();
        let mut unresumed = (*tls).clone();
        unresumed.resumption = rustls::client::Resumption::disabled();
        SocketTransport {
            connector: Connector { connect_timeout: settings.connect_timeout, names: Names::System },
            tls: TlsConnector::from(tls),
            tls_through_exits: TlsConnector::from(Arc::new(unresumed)),
            pool,
            settings,
        }
    }

    /// Finds names' addresses there from now on.
    pub(crate) fn with_names(mut self, names: Names) -> SocketTransport {
        self.connector.names = names;
        self
    }

    /// The connector (the fetch transport's way through exits).
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The keep-alive pool (for metrics and tests) and upstream slots.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Sends `req` and returns the response with its body streaming.
    ///
    /// A pooled connection is tried first. If it proves dead before the
    /// upstream could have acted — the write fails, or an idempotent
    /// request gets EOF without a single byte — the request goes once more
    /// on a fresh connection. Nothing else is ever sent twice.
    pub async fn send(&self, req: &UpstreamRequest) -> Result<Response<Body>, UpstreamError> {
        let key = PoolKey { origin: req.origin.clone(), egress: req.egress.clone(), checked: req.check.is_strict() };
        let mut head = BytesMut::new();
        let credential = req.credential_header();
        encode::encode_head(&req.method, &req.path, &req.origin, &req.headers, credential, req.body.len(), &mut head);
        if req.body.len() <= COALESCE_BODY_BYTES {
            head.extend_from_slice(&req.body);
        }
        let head = head.freeze();

        if let Some(conn) = self.pool.checkout(&key) {
            match self.exchange(conn, true, req, &head, &key).await {
                Ok(resp) => return Ok(resp),
                Err(ExchangeError::Failed(e)) => return Err(e),
                Err(ExchangeError::Stale) => {
                    tracing::debug!(origin = %req.origin, "pooled connection was stale; using a fresh one");
                }
            }
        }
        // Boxed: a new connection (resolve, connect, TLS, an exit) is the
        // rare case, and its future would otherwise make every request's
        // several times larger.
        let conn = Box::pin(self.connect(&req.origin, &req.egress, req.check)).await?;
        match self.exchange(conn, false, req, &head, &key).await {
            Ok(resp) => Ok(resp),
            Err(ExchangeError::Failed(e)) => Err(e),
            Err(ExchangeError::Stale) => Err(UpstreamError::Closed { host: req.origin.host.to_string() }),
        }
    }

    /// Writes the request on `conn` and reads the response head.
    async fn exchange(
        &self,
        mut conn: Conn,
        reused: bool,
        req: &UpstreamRequest,
        head: &Bytes,
        key: &PoolKey,
    ) -> Result<Response<Body>, ExchangeError> {
        let host = || req.origin.host.to_string();
        let write = async {
            conn.write_all(head).await?;
            if req.body.len() > COALESCE_BODY_BYTES {
                conn.write_all(&req.body).await?;
            }
            conn.flush().await
        };
        // An upstream that stops reading must not hold us forever. A head
        // that fits the socket buffer is written at once: the timer is only
        // made when the write has to wait.
        let mut write = std::pin::pin!(write);
        let at_once = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        let written = match at_once {
            Poll::Ready(r) => r,
            Poll::Pending => match tokio::time::timeout(self.settings.response_timeout, write).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
            },
        };
        if let Err(e) = written {
            // Not completely written: the upstream cannot have acted on it.
            if reused {
                return Err(ExchangeError::Stale);
            }
            return Err(ExchangeError::Failed(UpstreamError::Write { host: host(), reason: e.kind().to_string() }));
        }

        let mut buf = std::mem::take(&mut conn.spare);
        let limit = self.settings.max_response_head_bytes;
        let read = tokio::time::timeout(self.settings.response_timeout, read_head(&mut conn, &mut buf, limit)).await;
        let head = match read {
            Err(_) => {
                return Err(ExchangeError::Failed(UpstreamError::HeadTimeout {
                    host: host(),
                    secs: self.settings.response_timeout.as_secs(),
                }));
            }
            Ok(Err(HeadError::Closed)) if reused && is_idempotent(&req.method) => {
                return Err(ExchangeError::Stale);
            }
            Ok(Err(e)) => return Err(ExchangeError::Failed(e.with_host(host()))),
            Ok(Ok(head)) => head,
        };

        let framing = head
            .framing(&req.method)
            .map_err(|source| ExchangeError::Failed(UpstreamError::Parse { host: host(), source }))?;
        let reuse = head.is_keep_alive().then(|| (Arc::clone(&self.pool), key.clone()));
        let body = UpstreamBody::new(conn, buf, framing, reuse);
        let mut resp = Response::new(Guarded::new(body, self.settings.idle_timeout).boxed_unsync());
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// A new connection to `origin`, TLS-wrapped for https (ALPN `http/1.1`),
    /// never pooled: for requests and for WebSocket tunnels.
    pub async fn connect(&self, origin: &Origin, egress: &Egress, check: TargetCheck) -> Result<Conn, UpstreamError> {
        let slot = self.pool.slot().await?;
        let (tcp, _peer) = self.connector.connect(origin, egress, check).await?;
        match origin.scheme {
            Scheme::Http => Ok(Conn::new(Stream::Plain(tcp), Some(slot))),
            Scheme::Https => {
                let host = origin.host.to_string();
                let name = tls::server_name(&origin.host)
                    .ok_or_else(|| UpstreamError::Tls { host: host.clone(), reason: "invalid server name".into() })?;
                let tls = if *egress == Egress::Direct { &self.tls } else { &self.tls_through_exits };
                let handshake = tls.connect(name, tcp);
                let stream = tokio::time::timeout(self.settings.connect_timeout, handshake)
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout { host: host.clone() })?
                    .map_err(|e| UpstreamError::Tls { host, reason: e.to_string() })?;
                Ok(Conn::new(Stream::Tls(Box::new(stream)), Some(slot)))
            }
        }
    }
}

/// Methods whose repetition has no further effect (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Errors of [`read_head`] before the host is attached.
enum HeadError {
    Closed,
    Read(io::ErrorKind),
    Parse(ParseError),
}

impl HeadError {
    fn with_host(self, host: String) -> UpstreamError {
        match self {
            HeadError::Closed => UpstreamError::Closed { host },
            HeadError::Read(kind) => UpstreamError::Read { host, reason: kind.to_string() },
            HeadError::Parse(source) => UpstreamError::Parse { host, source },
        }
    }
}

/// Reads until a final (non-1xx) response head is parsed; bytes after it
/// stay in `buf` for the body.
async fn read_head(conn: &mut Conn, buf: &mut BytesMut, limit: usize) -> Result<ResponseHead, HeadError> {
    loop {
        while let Some(head) = parse_head(buf, limit).map_err(HeadError::Parse)? {
            if !head.is_interim() {
                return Ok(head);
            }
        }
        buf.reserve(READ_CHUNK);
        match conn.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Parse(ParseError::Malformed("connection closed inside the head")));
            }
            Ok(_) => {}
            Err(e) => return Err(HeadError::Read(e.kind())),
        }
    }
}

/// An upstream socket, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An upstream connection: its stream and the slot it holds (released with
/// it; see [`pool::Slot`]).
pub struct Conn {
    stream: Stream,
    _slot: Option<Slot>,
    /// The read buffer of the last exchange, kept while the connection is
    /// pooled: the next response is read into the same memory once the
    /// last one's frames are gone (no allocation per request).
    spare: BytesMut,
}

impl Conn {
    pub(crate) fn new(stream: Stream, slot: Option<Slot>) -> Conn {
        Conn { stream, _slot: slot, spare: BytesMut::new() }
    }

    /// The TCP socket under any TLS layer.
    pub fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A response body read from the upstream connection as the client reads
/// it: nothing is collected, each read is handed on as one frame. Dropping
/// it (the client went away) drops the connection, which tells the upstream
/// to stop. A body that ends early yields an error, never a clean end. The
/// idle timeout and flush-before-abort come from [`guard::Guarded`].
pub struct UpstreamBody {
    conn: Option<Conn>,
    buf: BytesMut,
    decoder: BodyDecoder,
    /// Where the connection goes back when the body ends cleanly (`None`
    /// when the upstream said `connection: close` or spoke HTTP/1.0).
    reuse: Option<(Arc<Pool>, PoolKey)>,
    /// How much the next read asks for: doubled after a read that filled
    /// it, halved after one that used less than a quarter.
    read_size: usize,
}

impl UpstreamBody {
    fn new(conn: Conn, buf: BytesMut, framing: Framing, reuse: Option<(Arc<Pool>, PoolKey)>) -> UpstreamBody {
        let decoder = BodyDecoder::new(framing);
        let mut body = UpstreamBody { conn: Some(conn), buf, decoder, reuse, read_size: READ_CHUNK };
        if body.decoder.is_done() {
            body.release();
        }
        body
    }

    /// The body ended by its framing: pool the connection if it is clean.
    fn release(&mut self) {
        let conn = self.conn.take();
        if let (Some(mut conn), Some((pool, key))) = (conn, self.reuse.take())
            && self.buf.is_empty()
        {
            // A buffer grown by a bulk body is not kept for an idle socket.
            if self.buf.capacity() <= SPARE_BYTES {
                conn.spare = std::mem::take(&mut self.buf);
            }
            pool.checkin(key, conn);
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.decoder = BodyDecoder::Done;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.decode(&mut this.buf) {
                Err(e) => return this.fail(e.into()),
                Ok(Some(data)) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.decoder.is_done() => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return this.fail(DecodeError::Truncated.into());
            };
            if this.buf.capacity() - this.buf.len() < this.read_size / 4 {
                this.buf.reserve(this.read_size);
            }
            let offered = this.buf.capacity() - this.buf.len();
            match ready!(tokio_util::io::poll_read_buf(Pin::new(conn), cx, &mut this.buf)) {
                Ok(0) => {
                    this.conn = None;
                    if let Err(e) = this.decoder.eof() {
                        return this.fail(e.into());
                    }
                    return Poll::Ready(None);
                }
                Ok(n) => {
                    if n == offered {
                        this.read_size = (this.read_size * 2).min(MAX_READ);
                    } else if n < this.read_size / 4 {
                        this.read_size = (this.read_size / 2).max(READ_CHUNK);
                    }
                    continue;
                }
                // A TLS peer that closes without close_notify surfaces as
                // UnexpectedEof: for a close-delimited body that is a
                // truncation, never a clean end.
                Err(e) => return this.fail(BodyError::Read(e.kind())),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
