//! Live reload (SPEC §13): on SIGHUP, and when the configuration file
//! changes (its content, checked every second), the file is read and
//! validated — as at start, the files it names included — and swapped in
//! as a whole. An invalid one leaves the running configuration as it was
//! (an error names the key). Requests and streams in flight keep the
//! configuration they started with; the state of what stays is handed on
//! ([`Config::carry_from`]); the TLS certificate is read again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, process_env};
use crate::proxy::App;

/// Where the running configuration came from.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The file (`--config`); without one there is nothing to reload.
    pub path: Option<PathBuf>,
    /// `--listen`, which overrides the file's.
    pub listen: Option<String>,
}

/// Watches `source` until the task is aborted.
pub(super) async fn watch(app: Arc<App>, source: Source, tls: Option<Arc<ArcSwap<TlsAcceptor>>>) {
    let Some(path) = source.path.clone() else { return };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A change is seen in the file's metadata (one stat a second); its
    // content decides (a touch alone reloads nothing).
    let stamp = |path: &PathBuf| std::fs::metadata(path).ok().map(|m| (m.modified().ok(), m.len()));
    let content = |path: &PathBuf| std::fs::read(path).ok().map(|b| crate::client::sha256(&b));
    let (mut stamped, mut seen) = (stamp(&path), content(&path));
    loop {
        let signalled = tokio::select! {
            Some(()) = async { hangup.as_mut()?.recv().await } => true,
            _ = tick.tick() => false,
        };
        if !signalled {
            let now = stamp(&path);
            if now == stamped {
                continue;
            }
            stamped = now;
        }
        let now = content(&path);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        match reload(&app, &source, tls.as_deref()) {
            Ok(digest) => {
                app.metrics.reload("ok");
                tracing::info!(%digest, signal = signalled, "configuration reloaded");
            }
            Err(e) => {
                app.metrics.reload("error");
                tracing::error!(error = %e, "configuration reload failed; the one in force stays");
            }
        }
    }
}

/// Reads, validates and installs the configuration; its digest.
fn reload(app: &App, source: &Source, tls: Option<&ArcSwap<TlsAcceptor>>) -> Result<String, ConfigError> {
    let old = app.snapshot();
    let mut new = Config::load(source.path.as_deref(), source.listen.as_deref(), &process_env)?;
    super::check_files(&new)?;
    // What is bound at start stays until a restart.
    if new.listen != old.listen {
        tracing::warn!(listen = %new.listen, "listen changed: that takes a restart; still listening where it was");
        new.listen = old.listen;
    }
    if new.data_dir != old.data_dir || new.state_dir != old.state_dir {
        tracing::warn!("data_dir changed: that takes a restart; the usage store stays where it is");
        new.data_dir.clone_from(&old.data_dir);
        new.state_dir.clone_from(&old.state_dir);
    }
    if new.tls.is_some() != old.tls.is_some() {
        tracing::warn!("[tls] was added or removed: that takes a restart");
    }
    let acceptor = match (tls, &new.tls) {
        (Some(_), Some(t)) => Some(super::acceptor(t)?),
        _ => None,
    };
    new.carry_from(&old);
    let digest = new.digest.clone();
    app.install(new)?;
    if let (Some(slot), Some(acceptor)) = (tls, acceptor) {
        slot.store(Arc::new(acceptor));
    }
    Ok(digest)
}
