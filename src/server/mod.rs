//! The accept loop: one task per downstream connection, served by hyper
//! (HTTP/1.1 and HTTP/2, upgrades allowed; over TLS when `[tls]` is set),
//! with the limits of `[limits]` as SPEC §1 defines them — connections,
//! HTTP/2 streams per connection, head size, and `header_read_timeout_ms`
//! from accept (through TLS) and from the end of each response ([`idle`]) —
//! hyper's own refusals answered as JSON ([`rescue`]), and graceful
//! shutdown.

mod idle;
mod reload;
mod rescue;

pub use self::reload::Source;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use self::idle::IdleClock;
use self::rescue::Rescued;
use crate::auth::Token;
use crate::body::Holding;
use crate::config::{Config, ConfigError, TlsConfig};
use crate::proxy::{App, over_capacity_response};

/// How long an idle connection that was sent GOAWAY (or told to close)
/// may take to finish before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
}

/// A bound, not yet serving, veilgate.
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    /// Swapped by a reload (the certificate is read again).
    tls: Option<Arc<arc_swap::ArcSwap<TlsAcceptor>>>,
    /// What a reload reads.
    source: Source,
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port: see [`Server::local_addr`]).
    pub async fn bind(config: Config, token: Token) -> Result<Server, StartError> {
        let addr = config.listen;
        let tls = config.tls.as_ref().map(acceptor).transpose()?.map(|a| Arc::new(arc_swap::ArcSwap::from_pointee(a)));
        let listener = TcpListener::bind(addr).await.map_err(|error| StartError::Bind { addr, error })?;
        let listen = listener.local_addr().map_err(|error| StartError::Bind { addr, error })?;
        let app = Arc::new(App::new(config, token, listen)?);
        Ok(Server { app, listener, tls, source: Source::default() })
    }

    /// Reloads from `source` on SIGHUP and when its file changes (§13).
    pub fn reloading(mut self, source: Source) -> Server {
        self.source = source;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.app.listen
    }

    /// Serves until `shutdown` completes; then stops accepting, lets
    /// requests and streams in flight finish for up to `shutdown_grace_ms`,
    /// and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let probes = tokio::spawn(Arc::clone(&self.app).probe_keys());
        let reloads = tokio::spawn(reload::watch(Arc::clone(&self.app), self.source.clone(), self.tls.clone()));
        let config = self.app.snapshot();
        let limits = &config.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // `header_read_timeout_ms` is the connection's idle clock (see
            // `idle`), for HTTP/1.1 and HTTP/2 alike; hyper's own would be
            // a second timer, made anew for every request.
            .header_read_timeout(None)
            // Room above the limit so that veilgate, not hyper, answers an
            // oversized head; past it hyper refuses, and [`rescue`] turns
            // that refusal into the same JSON.
            .max_buf_size(limits.max_header_bytes.saturating_mul(2));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .max_header_list_size(u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX));
        let builder = Arc::new(builder);
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let (stop, stopping) = watch::channel(false);
        let tracker = TaskTracker::new();

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
            let accepted_at = Instant::now();
            let timeout = limits.header_read_timeout;
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                let tls = self.tls.as_ref().map(|t| TlsAcceptor::clone(&t.load()));
                tokio::spawn(reject(stream, tls, timeout));
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Downstream {
                app: Arc::clone(&self.app),
                builder: Arc::clone(&builder),
                stopping: stopping.clone(),
                clock: IdleClock::new(accepted_at),
                timeout,
                _permit: permit,
            };
            match &self.tls {
                None => {
                    tracker.spawn(conn.serve(stream));
                }
                Some(acceptor) => {
                    let accept = acceptor.load().accept(stream);
                    // The head timeout runs through the handshake.
                    tracker.spawn(async move {
                        match tokio::time::timeout_at(accepted_at + timeout, accept).await {
                            Ok(Ok(tls)) => conn.serve(tls).await,
                            _ => tracing::debug!("TLS handshake with a client failed or timed out"),
                        }
                    });
                }
            }
        }
        drop(self.listener);
        probes.abort();
        reloads.abort();
        let _ = stop.send(true);
        tracker.close();
        let grace = config.shutdown_grace;
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: waiting for requests in flight");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
        // Everything settled so far is committed before the process exits;
        // requests cut by the end of the grace period are committed when
        // their connections are dropped (the store's last write).
        self.app.flush_usage();
    }
}

/// One accepted downstream connection and what serving it needs.
struct Downstream {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stopping: watch::Receiver<bool>,
    clock: Arc<IdleClock>,
    /// `header_read_timeout_ms`.
    timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Downstream {
    /// Serves the connection until it ends, stays idle past the head
    /// timeout (closed; GOAWAY on HTTP/2), or shutdown drains it.
    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, clock) = (Arc::clone(&self.app), Arc::clone(&self.clock));
        let service = service_fn(move |req| {
            let app = Arc::clone(&app);
            let busy = clock.busy();
            async move { Ok::<_, Infallible>(app.handle(req).await.map(|inner| Holding { inner, _guard: busy })) }
        });
        let max_header_bytes = self.app.snapshot().limits.max_header_bytes;
        let io = TokioIo::new(Rescued::new(stream, Arc::clone(&self.clock), max_header_bytes));
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        // Shutdown, the idle timeout and the hard stop after it live in a
        // set that polls a member only when that member woke: the
        // connection wakes this task several times per request, and none
        // of those wake-ups needs them looked at.
        let mut events: FuturesUnordered<Pin<Box<dyn Future<Output = Event> + Send>>> = FuturesUnordered::new();
        let mut stopping = self.stopping.clone();
        events.push(Box::pin(async move {
            while stopping.changed().await.is_ok() && !*stopping.borrow() {}
            Event::Stop
        }));
        let (clock, timeout) = (Arc::clone(&self.clock), self.timeout);
        events.push(Box::pin(async move {
            clock.expired(timeout).await;
            Event::Idle
        }));
        let mut draining = false;
        loop {
            tokio::select! {
                biased;
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                Some(event) = events.next() => match event {
                    Event::Stop if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Event::Stop => {}
                    Event::Idle => {
                        tracing::debug!("no request head within header_read_timeout_ms; closing the connection");
                        if !draining {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        let at = Instant::now() + IDLE_CLOSE_GRACE;
                        events.push(Box::pin(async move {
                            tokio::time::sleep_until(at).await;
                            Event::HardStop
                        }));
                    }
                    Event::HardStop => return,
                },
            }
        }
    }
}

/// What may end or drain a downstream connection besides the connection.
enum Event {
    /// The server is shutting down: drain.
    Stop,
    /// No request head within `header_read_timeout_ms`: drain, then stop
    /// hard after a grace.
    Idle,
    HardStop,
}

/// Loads every file the configuration names — the TLS certificate and
/// key, the extra CA file — as start-up would, without binding anything
/// (`check-config` fails on what the server would refuse).
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    if let Some(tls) = &config.tls {
        acceptor(tls)?;
    }
    crate::upstream::tls::root_store(config.upstream.extra_ca_file.as_deref())?;
    Ok(())
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

/// Over `max_connections`: a 503 for the new connection, the others
/// unharmed. On the TLS listener the answer goes inside TLS, after a
/// handshake bounded by the head timeout; an HTTP/2 client (which would not
/// read an HTTP/1.1 answer) gets a clean close instead.
async fn reject(stream: TcpStream, tls: Option<TlsAcceptor>, timeout: Duration) {
    let refusal = async {
        match tls {
            None => refuse(stream, true).await,
            Some(acceptor) => {
                if let Ok(stream) = acceptor.accept(stream).await {
                    let speaks_h1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
                    refuse(stream, speaks_h1).await;
                }
            }
        }
    };
    // A client that neither handshakes nor reads is dropped.
    let _ = tokio::time::timeout(timeout, refusal).await;
}

async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, answer: bool) {
    if answer {
        let _ = stream.write_all(&over_capacity_response()).await;
    }
    let _ = stream.shutdown().await;
}
