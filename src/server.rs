//! The accept loop: one task per downstream connection, served by hyper
//! (HTTP/1.1 and HTTP/2, upgrades allowed), with the connection limit, the
//! request-head limits and the slow-client timeout of `[limits]`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::{Config, ConfigError, Token};
use crate::proxy::{App, over_capacity_response};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// A bound, not yet serving, veilgate.
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port: see [`Server::local_addr`]).
    pub async fn bind(config: Config, token: Token) -> Result<Server, StartError> {
        let addr = config.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let listen = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let app = Arc::new(App::new(config, token, listen)?);
        Ok(Server { app, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.app.listen
    }

    /// Serves until `shutdown` completes, then stops accepting.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limits = &self.app.config.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // Room above the limit so that veilgate, not hyper, answers an
            // oversized head (with JSON); hyper's plain 431 only past twice it.
            .max_buf_size(limits.max_header_bytes.saturating_mul(2));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX));
        let permits = Arc::new(Semaphore::new(limits.max_connections));

        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, _peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little
                    // instead of spinning, keep serving what is open.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tokio::spawn(reject(stream));
                continue;
            };
            let _ = stream.set_nodelay(true);
            let app = Arc::clone(&self.app);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(app.handle(req).await) }
                });
                if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
    }
}

/// Over `max_connections`: a 503 for the new connection, the others unharmed.
async fn reject(mut stream: TcpStream) {
    let _ = stream.write_all(&over_capacity_response()).await;
    let _ = stream.shutdown().await;
}
