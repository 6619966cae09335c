//! WebSocket tunnels (spec §6): the client's HTTP/1.1 upgrade is accepted
//! only after veilgate's own handshake with the upstream succeeded — over a
//! connection from the same connector and TLS as the socket transport,
//! carrying only the policy's headers plus `sec-websocket-protocol` — then
//! messages are relayed both ways with per-hop ping/pong, close frames
//! passed on, an idle timeout, and backpressure: one message in flight per
//! direction, so a slow reader slows the sender instead of growing memory,
//! and a bounded write buffer per hop, so pongs owed to a peer that floods
//! pings and never reads replace each other instead of piling up. Once
//! either side ends, the other is given [`CLOSE_GRACE`] to take the close
//! frame; a peer that does not read is then simply dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::body::{Body, empty};
use crate::policy::target::{Origin, Scheme};
use crate::upstream::connect::{Egress, TargetCheck};
use crate::upstream::{SocketTransport, UpstreamError};

/// Messages longer than this are sent on as frames of this size (RFC 6455
/// §5.4 lets an intermediary refragment when no extension is in use), so a
/// hop never needs to buffer a whole message to send it.
const FRAME_BYTES: usize = 64 * 1024;
/// What a hop may buffer for writing: a few frames, control frames
/// included. A pong that does not fit replaces the pending one.
const MAX_WRITE_BUFFER: usize = 256 * 1024;

/// How long a closing tunnel waits for a peer to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a tunnel needs besides the request.
pub(crate) struct TunnelSettings {
    pub max_message_bytes: usize,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// `veilgate_tunnels_open` of this server.
    pub open_tunnels: Gauge,
}

/// True for a client asking to upgrade to WebSocket.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token))))
    };
    has(header::UPGRADE, "websocket")
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("a WebSocket upgrade needs sec-websocket-key")]
    NoKey,
    #[error("only WebSocket version 13 is supported")]
    Version,
    #[error("the tunnel target is not a valid URL")]
    BadTarget,
    /// The upstream answered the handshake with this status instead of 101.
    #[error("the upstream refused the WebSocket handshake with {0}")]
    Refused(StatusCode),
    #[error("the WebSocket handshake with {host} failed: {reason}")]
    Handshake { host: String, reason: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl TunnelError {
    /// The client gets the upstream's refusal status; a broken handshake is
    /// a 502 like any other upstream failure.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            TunnelError::NoKey | TunnelError::Version | TunnelError::BadTarget => StatusCode::BAD_REQUEST,
            TunnelError::Refused(status) => *status,
            TunnelError::Handshake { .. } => StatusCode::BAD_GATEWAY,
            TunnelError::Upstream(e) => e.status(),
        }
    }
}

/// Handshakes with the upstream, then answers the client's upgrade (101
/// and a relay task), or fails with the reason (the upstream's refusal
/// keeps its status).
pub(crate) async fn open(
    mut req: Request<Incoming>,
    origin: Origin,
    path: String,
    headers: HeaderMap,
    (check, egress): (TargetCheck, &Egress),
    socket: &SocketTransport,
    settings: TunnelSettings,
) -> Result<Response<Body>, TunnelError> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned().ok_or(TunnelError::NoKey)?;
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Err(TunnelError::Version);
    }
    let host = origin.host.to_string();
    let scheme = match origin.scheme {
        Scheme::Http => "ws",
        Scheme::Https => "wss",
    };
    let uri = format!("{scheme}://{}{path}", origin.host_header());
    let mut upstream_req = uri.as_str().into_client_request().map_err(|_| TunnelError::BadTarget)?;
    for (name, value) in &headers {
        upstream_req.headers_mut().append(name, value.clone());
    }

    let config = ws_config(settings.max_message_bytes);
    let conn = socket.connect(&origin, egress, check).await?;
    let handshake = tokio_tungstenite::client_async_with_config(upstream_req, conn, Some(config));
    let (upstream, upstream_resp) = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Err(_) => {
            let secs = settings.handshake_timeout.as_secs();
            return Err(UpstreamError::HeadTimeout { host, secs }.into());
        }
        Ok(Err(WsError::Http(resp))) => return Err(TunnelError::Refused(resp.status())),
        Ok(Err(e)) => return Err(TunnelError::Handshake { host, reason: e.to_string() }),
        Ok(Ok(pair)) => pair,
    };

    let chosen = upstream_resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let client = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        settings.open_tunnels.inc();
        relay(client, upstream, settings.idle_timeout).await;
        settings.open_tunnels.dec();
    });

    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = chosen {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    h.insert(crate::proxy::TRANSPORT_HEADER, HeaderValue::from_static("socket"));
    Ok(resp)
}

/// Limits of both hops. The write buffer is bounded ([`MAX_WRITE_BUFFER`]):
/// tungstenite queues the pong for every ping it reads, and without a bound
/// a peer that floods pings and never reads would grow it forever; with it,
/// a pong that does not fit replaces the pending one (RFC 6455 §5.5.3: only
/// the latest ping need be answered). Long messages go out in frames of
/// [`FRAME_BYTES`] so that they always fit.
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .write_buffer_size(FRAME_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Sends a data message, as frames of at most [`FRAME_BYTES`] when longer;
/// each frame is flushed before the next (one in flight per direction).
async fn send_message<W>(tx: &mut W, msg: Message) -> Result<(), WsError>
where
    W: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let kind = match &msg {
        Message::Text(t) if t.len() > FRAME_BYTES => OpData::Text,
        Message::Binary(b) if b.len() > FRAME_BYTES => OpData::Binary,
        _ => return tx.send(msg).await,
    };
    let data = msg.into_data();
    let mut at = 0;
    while at < data.len() {
        let end = (at + FRAME_BYTES).min(data.len());
        let opcode = if at == 0 { OpCode::Data(kind) } else { OpCode::Data(OpData::Continue) };
        tx.send(Message::Frame(Frame::message(data.slice(at..end), opcode, end == data.len()))).await?;
        at = end;
    }
    Ok(())
}

/// Milliseconds since `start`, for the shared last-activity clock.
fn since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Relays until either side closes, errs, or the tunnel is idle.
async fn relay<C, U>(client: WebSocketStream<C>, upstream: WebSocketStream<U>, idle: Duration)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    let idle_ms = idle.as_millis() as u64;
    let watchdog = async {
        loop {
            let quiet = since(start).saturating_sub(last.load(Ordering::Relaxed));
            if quiet >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
        }
    };
    let (to_client, to_upstream) = tokio::select! {
        end = forward(&mut client_rx, &mut upstream_tx, &last, start) => (end.to_read_side(), end.to_other_side()),
        end = forward(&mut upstream_rx, &mut client_tx, &last, start) => (end.to_other_side(), end.to_read_side()),
        () = watchdog => (Ended::Idle.to_read_side(), Ended::Idle.to_other_side()),
    };
    // Tell each side why it is closed, but never wait on a peer that does
    // not read: after the grace the sockets are dropped.
    let client_close = finish(&mut client_tx, to_client);
    let upstream_close = finish(&mut upstream_tx, to_upstream);
    let _ = tokio::time::timeout(CLOSE_GRACE, futures_util::future::join(client_close, upstream_close)).await;
}

/// Sends `frame` (if any) and completes the close handshake of one side.
async fn finish<W>(tx: &mut W, frame: Option<Message>)
where
    W: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    if let Some(frame) = frame {
        let _ = tx.send(frame).await;
    }
    let _ = tx.close().await;
}

/// How a direction of the relay ended, seen from the side that was read.
#[derive(Clone, Debug, PartialEq)]
enum Ended {
    /// The side sent a close frame: it goes to the other side as it came.
    Closed(Option<CloseFrame>),
    /// The side vanished without a close frame (EOF or a broken stream).
    Vanished,
    /// The side sent a message over `max_message_bytes`.
    TooBig,
    /// The other side would not take a message (its stream broke).
    Blocked,
    Idle,
}

impl Ended {
    /// The close frame for the side that was read (beyond the reply to its
    /// own close frame, which tungstenite queues by itself).
    fn to_read_side(&self) -> Option<Message> {
        match self {
            Ended::Closed(_) | Ended::Vanished => None,
            Ended::TooBig => close(CloseCode::Size, "message too big"),
            Ended::Blocked => close(CloseCode::Away, "peer went away"),
            Ended::Idle => close(CloseCode::Away, "idle timeout"),
        }
    }

    /// The close frame for the other side: the read side's own, as it came.
    fn to_other_side(&self) -> Option<Message> {
        match self {
            Ended::Closed(frame) => Some(Message::Close(frame.clone())),
            Ended::Vanished | Ended::TooBig => close(CloseCode::Away, "peer went away"),
            Ended::Blocked => None,
            Ended::Idle => close(CloseCode::Away, "idle timeout"),
        }
    }
}

fn close(code: CloseCode, reason: &'static str) -> Option<Message> {
    Some(Message::Close(Some(CloseFrame { code, reason: reason.into() })))
}

/// Forwards one direction: data messages; pings and pongs stay on their
/// hop (tungstenite answers pings itself). Returns at the first close
/// frame, error, or end of stream; the caller sends the close frames.
async fn forward<R, W>(rx: &mut R, tx: &mut W, last: &AtomicU64, start: Instant) -> Ended
where
    R: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    W: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    while let Some(msg) = rx.next().await {
        last.store(since(start), Ordering::Relaxed);
        match msg {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                if send_message(tx, msg).await.is_err() {
                    return Ended::Blocked;
                }
            }
            Ok(Message::Close(frame)) => return Ended::Closed(frame),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(WsError::Capacity(_)) => return Ended::TooBig,
            Err(_) => break,
        }
    }
    Ended::Vanished
}
