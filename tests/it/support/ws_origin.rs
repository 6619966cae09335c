//! A WebSocket origin (plain or TLS) built on tokio-tungstenite: records
//! each handshake's request, picks `realtime` when offered, and echoes, or
//! refuses, closes with a code, or vanishes, as the test asks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, http};

use super::tls::TestCa;

/// How the origin behaves after the handshake.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Echo text and binary messages.
    Echo,
    /// Refuse the handshake with this status.
    Refuse(u16),
    /// After the first message, close with this code and reason.
    CloseAfterFirst(u16, &'static str),
    /// After the first message, drop the TCP connection.
    VanishAfterFirst,
    /// After the first message, send this many bytes of pings, then the
    /// text `done`, and never read again (pongs pile up towards it).
    FloodPingsAfterFirst(usize),
    /// After the first message, keep the connection open and never read.
    StallAfterFirst,
}

#[derive(Default)]
struct Log {
    handshakes: Vec<Request>,
    closes: Vec<Option<CloseFrame>>,
}

pub struct WsOrigin {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    closed: Arc<tokio::sync::Notify>,
}

impl WsOrigin {
    pub async fn start(behavior: Behavior, ca: Option<&TestCa>) -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let acceptor = ca.map(|ca| tokio_rustls::TlsAcceptor::from(ca.server_config(&[b"http/1.1"])));
        let l = Arc::clone(&log);
        let closed = Arc::new(tokio::sync::Notify::new());
        let c = Arc::clone(&closed);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, behavior, acceptor) = (Arc::clone(&l), behavior.clone(), acceptor.clone());
                let closed = Arc::clone(&c);
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(tcp, log, behavior, closed).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve(tls, log, behavior, closed).await;
                            }
                        }
                    }
                });
            }
        });
        WsOrigin { addr, log, closed }
    }

    /// The handshake requests received.
    pub fn handshakes(&self) -> Vec<Request> {
        self.log.lock().unwrap().handshakes.clone()
    }

    /// Waits until a close frame has arrived.
    pub async fn close_received(&self) {
        self.closed.notified().await
    }

    /// Close frames received from veilgate.
    pub fn closes(&self) -> Vec<Option<CloseFrame>> {
        self.log.lock().unwrap().closes.clone()
    }
}

#[allow(clippy::result_large_err)] // the error type is tungstenite's callback contract
async fn serve<S>(stream: S, log: Arc<Mutex<Log>>, behavior: Behavior, closed: Arc<tokio::sync::Notify>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let l = Arc::clone(&log);
    let b = behavior.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        l.lock().unwrap().handshakes.push(req.clone());
        if let Behavior::Refuse(code) = b {
            let mut refusal = ErrorResponse::new(Some("{\"error\":\"nope\"}".to_owned()));
            *refusal.status_mut() = http::StatusCode::from_u16(code).expect("status");
            return Err(refusal);
        }
        let offered = req.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
        if offered.split(',').any(|p| p.trim() == "realtime") {
            resp.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static("realtime"));
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => match behavior {
                Behavior::Echo => {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                }
                Behavior::CloseAfterFirst(code, reason) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    // Read on until veilgate answers the close.
                }
                Behavior::VanishAfterFirst => return,
                Behavior::FloodPingsAfterFirst(bytes) => {
                    let _ = flood_pings(&mut ws, bytes).await;
                    let _ = ws.send(Message::text("done")).await;
                    std::future::pending::<()>().await;
                }
                Behavior::StallAfterFirst => std::future::pending::<()>().await,
                Behavior::Refuse(_) => return,
            },
            Message::Close(frame) => {
                log.lock().unwrap().closes.push(frame);
                closed.notify_one();
            }
            _ => {}
        }
    }
}

/// Sends `bytes` worth of 125-byte pings without reading anything.
pub async fn flood_pings<S>(ws: &mut S, bytes: usize) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let payload = bytes::Bytes::from(vec![b'p'; 125]);
    for i in 0..bytes / 127 {
        ws.feed(Message::Ping(payload.clone())).await?;
        if i % 256 == 255 {
            ws.flush().await?;
        }
    }
    ws.flush().await
}
