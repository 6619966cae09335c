//! A raw-bytes origin, plain or TLS: records each request exactly as it
//! arrived and answers with a script of steps (bytes, pauses, waits for the
//! test, close, reset, or silence).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use super::tls::TestCa;

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Captured {
    /// The head, request line to blank line inclusive, byte for byte.
    pub head: String,
    pub body: Vec<u8>,
    /// Which accepted connection (0, 1, …) carried it.
    pub connection: usize,
    /// The TLS server name the client sent (`None`: plain, or no SNI).
    pub sni: Option<String>,
}

impl Captured {
    /// `METHOD target HTTP/1.1`
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    /// The request target, byte for byte.
    pub fn target(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or_default()
    }

    /// Header lines after the request line, as (lowercase name, value).
    pub fn headers(&self) -> Vec<(String, String)> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line has a colon");
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// One step of an origin's answer.
#[derive(Clone)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Pause.
    Sleep(Duration),
    /// Wait until the test adds a permit.
    Wait(Arc<Semaphore>),
    /// Close the connection (TLS: with close_notify).
    Close,
    /// Close the connection, then notify the test.
    CloseAndNotify(Arc<Notify>),
    /// Close without close_notify (TLS) — a plain TCP FIN.
    CloseAbruptly,
    /// Reset the connection (RST).
    Reset,
    /// Read until the peer closes, then notify.
    AwaitClose(Arc<Notify>),
    /// Never answer (keep the connection open).
    Hang,
}

impl Step {
    pub fn text(s: &str) -> Step {
        Step::Write(s.as_bytes().to_vec())
    }
}

type Script = dyn Fn(&Captured) -> Vec<Step> + Send + Sync;

/// The origin; keeps serving until the test ends.
pub struct RawOrigin {
    pub addr: SocketAddr,
    captured: Arc<Mutex<Vec<Captured>>>,
    connections: Arc<Mutex<usize>>,
    /// Connections open now, and the most ever open at once.
    open: Arc<Mutex<(usize, usize)>>,
}

impl RawOrigin {
    /// Starts an origin that answers every request with `reply(request)`.
    pub async fn start(reply: impl Fn(&Captured) -> Vec<u8> + Send + Sync + 'static) -> RawOrigin {
        RawOrigin::scripted(move |req| vec![Step::Write(reply(req))]).await
    }

    /// Answers every request with a JSON body.
    pub async fn json(body: &'static str) -> RawOrigin {
        RawOrigin::start(move |_| json_response(body)).await
    }

    /// Starts a plain origin whose answer to each request is a script.
    pub async fn scripted(script: impl Fn(&Captured) -> Vec<Step> + Send + Sync + 'static) -> RawOrigin {
        RawOrigin::serve(None, Arc::new(script)).await
    }

    /// Starts a TLS origin (certificate for `127.0.0.1` and `localhost`,
    /// issued by `ca`) whose answer to each request is a script.
    pub async fn scripted_tls(
        ca: &TestCa,
        script: impl Fn(&Captured) -> Vec<Step> + Send + Sync + 'static,
    ) -> RawOrigin {
        RawOrigin::serve(Some(ca.server_config(&[b"http/1.1"])), Arc::new(script)).await
    }

    async fn serve(tls: Option<Arc<rustls::ServerConfig>>, script: Arc<Script>) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let open = Arc::new(Mutex::new((0, 0)));
        let (cap, conns, opened) = (Arc::clone(&captured), Arc::clone(&connections), Arc::clone(&open));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut n = conns.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let (cap, script, tls) = (Arc::clone(&cap), Arc::clone(&script), tls.clone());
                {
                    let mut o = opened.lock().unwrap();
                    o.0 += 1;
                    o.1 = o.1.max(o.0);
                }
                let opened = Arc::clone(&opened);
                tokio::spawn(async move {
                    let _closed = Closed(opened);
                    match tls {
                        None => serve_connection(stream, id, None, cap, script).await,
                        Some(config) => {
                            let acceptor = rustls::server::Acceptor::default();
                            let Ok(start) = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await else {
                                return;
                            };
                            let sni = start.client_hello().server_name().map(str::to_owned);
                            if let Ok(s) = start.into_stream(config).await {
                                serve_connection(s, id, sni, cap, script).await;
                            }
                        }
                    }
                });
            }
        });
        RawOrigin { addr, captured, connections, open }
    }

    /// The most connections that were ever open at once.
    pub fn peak_connections(&self) -> usize {
        self.open.lock().unwrap().1
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }

    /// The only request received; panics if there was not exactly one.
    pub fn only_request(&self) -> Captured {
        let all = self.requests();
        assert_eq!(all.len(), 1, "expected exactly one upstream request");
        all[0].clone()
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// Counts a connection as closed when its task ends.
struct Closed(Arc<Mutex<(usize, usize)>>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.lock().unwrap().0 -= 1;
    }
}

/// Something the origin can close abruptly or reset.
trait Abort {
    fn tcp(&self) -> &TcpStream;
}

impl Abort for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Abort for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

async fn serve_connection<S>(
    mut stream: S,
    id: usize,
    sni: Option<String>,
    cap: Arc<Mutex<Vec<Captured>>>,
    script: Arc<Script>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Abort,
{
    let mut buf = Vec::new();
    loop {
        let Some(mut req) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        req.connection = id;
        req.sni = sni.clone();
        cap.lock().unwrap().push(req.clone());
        for step in script(&req) {
            match step {
                Step::Write(bytes) => {
                    if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Wait(sem) => sem.acquire().await.expect("semaphore open").forget(),
                Step::Close => {
                    let _ = stream.shutdown().await;
                    return;
                }
                Step::CloseAndNotify(done) => {
                    let _ = stream.shutdown().await;
                    drop(stream);
                    done.notify_one();
                    return;
                }
                Step::CloseAbruptly => {
                    // shutdown(Write) on the TCP socket under any TLS layer: a
                    // FIN without close_notify.
                    let _ = socket2_shutdown(stream.tcp());
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                Step::Reset => {
                    let _ = stream.tcp().set_zero_linger();
                    return;
                }
                Step::AwaitClose(done) => {
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    done.notify_one();
                    return;
                }
                Step::Hang => std::future::pending::<()>().await,
            }
        }
    }
}

fn socket2_shutdown(tcp: &TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.shutdown(std::net::Shutdown::Write)
}

/// `200 OK` with a JSON body and content-length framing.
pub fn json_response(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// Reads one request (head + content-length body); `None` on EOF.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Captured> {
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len = head
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(Captured { head, body, connection: 0, sni: None });
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
