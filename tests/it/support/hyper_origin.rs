//! An origin built on hyper's server over TLS, speaking HTTP/2 or HTTP/1.1
//! as ALPN decides; it answers with the protocol version it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::tls::TestCa;

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub path: String,
}

pub struct HyperOrigin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HyperOrigin {
    /// A TLS origin offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub async fn start(ca: &TestCa, alpn: &[&[u8]]) -> HyperOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(alpn));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log) = (acceptor.clone(), Arc::clone(&log));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let version = req.version();
                            log.lock().unwrap().push(Seen {
                                version,
                                headers: req.headers().clone(),
                                path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                            });
                            let body = format!("{{\"version\":\"{version:?}\"}}");
                            let resp = http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        HyperOrigin { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
