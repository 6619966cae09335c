//! The accept loop: one task per downstream connection, served by hyper
//! (HTTP/1.1 and HTTP/2, upgrades allowed; over TLS when `[tls]` is set),
//! with the connection limit, the request-head limits and the slow-client
//! timeout of `[limits]`, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, TlsConfig, Token};
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
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port: see [`Server::local_addr`]).
    pub async fn bind(config: Config, token: Token) -> Result<Server, StartError> {
        let addr = config.listen;
        let tls = config.tls.as_ref().map(acceptor).transpose()?;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let listen = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let app = Arc::new(App::new(config, token, listen)?);
        Ok(Server { app, listener, tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.app.listen
    }

    /// True when the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets
    /// requests and streams in flight finish for up to `shutdown_grace_ms`,
    /// and returns.
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
        let builder = Arc::new(builder);
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let graceful = GracefulShutdown::new();

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
            let (app, builder, watcher) = (Arc::clone(&self.app), Arc::clone(&builder), graceful.watcher());
            match &self.tls {
                None => {
                    tokio::spawn(serve(stream, app, builder, watcher, permit));
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let timeout = limits.header_read_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => serve(tls, app, builder, watcher, permit).await,
                            _ => tracing::debug!("TLS handshake with a client failed"),
                        }
                    });
                }
            }
        }
        drop(self.listener);
        let grace = self.app.config.shutdown_grace;
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: waiting for requests in flight");
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
    }
}

/// Serves one downstream connection until it ends or shutdown drains it.
async fn serve<S>(
    stream: S,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(app.handle(req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(permit);
}

/// The TLS acceptor of `[tls]` (HTTP/2 and HTTP/1.1 by ALPN).
fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ConfigError> {
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError(format!("tls.cert_file {}: {e}", tls.cert_file.display())))?;
    if certs.is_empty() {
        return Err(ConfigError(format!("tls.cert_file {}: no certificate found", tls.cert_file.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| ConfigError(format!("tls.key_file {}: {e}", tls.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError(format!("tls: the certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Over `max_connections`: a 503 for the new connection, the others unharmed.
async fn reject(mut stream: TcpStream) {
    let _ = stream.write_all(&over_capacity_response()).await;
    let _ = stream.shutdown().await;
}
