//! Real loopback servers for the integration tests: veilgate itself, a
//! raw-bytes origin that records every request byte for byte, and a raw
//! client that sends exactly the bytes a test gives it.

pub mod binary;
pub mod client;
pub mod gemini;
pub mod hyper_origin;
pub mod origin;
pub mod proxies;
pub mod tls;
pub mod ws_origin;

use std::net::SocketAddr;

use tokio::sync::oneshot;
use veilgate::config::{Config, RawConfig};
use veilgate::server::Server;

/// The token every test instance uses.
pub const TOKEN: &str = "test_token_0123456789";

/// A running veilgate on `127.0.0.1:<free port>`, stopped when dropped.
pub struct Veilgate {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    /// `data_dir` (token, usage store) unless the test names its own.
    _dir: Option<tempfile::TempDir>,
}

impl Veilgate {
    /// Starts veilgate with `extra` TOML added to a config that listens on a
    /// free loopback port and uses [`TOKEN`].
    pub async fn start(extra: &str) -> Veilgate {
        let dir = (!extra.contains("data_dir")).then(|| tempfile::tempdir().expect("tempdir"));
        let data_dir = dir.as_ref().map(|d| format!("data_dir = {:?}\n", d.path())).unwrap_or_default();
        let toml = format!("listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\n{data_dir}{extra}");
        let raw = RawConfig::from_toml(&toml).expect("test config parses");
        let config = Config::from_raw(raw, &|_| None).expect("test config is valid");
        let (token, _) = config.resolve_token(&|_| None).expect("token");
        let server = Server::bind(config, token).await.expect("bind");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Veilgate { addr, _stop: stop, _dir: dir }
    }

    /// A veilgate started elsewhere (the binary), to talk to.
    pub fn at(addr: SocketAddr) -> Veilgate {
        let (stop, _) = oneshot::channel::<()>();
        Veilgate { addr, _stop: stop, _dir: None }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A `[presets.NAME]` section pointing at a loopback origin.
/// An address that refuses connections for as long as the returned socket
/// lives: bound there but never listening. (Binding a listener and dropping
/// it frees the port for the next test that binds `127.0.0.1:0`, and a
/// request meant to be refused would reach that test's server.)
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = socket.local_addr().expect("local address");
    (socket, addr)
}

pub fn preset_at(name: &str, origin: SocketAddr) -> String {
    format!("[presets.{name}]\ntargets = [\"http://{origin}\"]\n")
}
