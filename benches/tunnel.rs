//! WebSocket tunnel cost on loopback: round-trip latency per message and
//! messages per second through one tunnel, against a direct connection to
//! the same echo origin.
//!
//! `cargo bench --bench tunnel` (add `-- --quick` for a smoke run).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use veilgate::config::{Config, RawConfig};
use veilgate::server::Server;

async fn echo_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(url: &str, addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let req = url.into_client_request().expect("request");
    tokio_tungstenite::client_async(req, tcp).await.expect("handshake").0
}

async fn round_trips(url: &str, addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut ws = connect(url, addr).await;
    let payload = "x".repeat(256);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::text(payload.clone())).await.expect("send");
        loop {
            match ws.next().await.expect("open").expect("ok") {
                Message::Text(_) => break,
                _ => continue,
            }
        }
        out.push(t.elapsed());
    }
    out
}

async fn rate(url: &str, addr: SocketAddr, n: usize) -> f64 {
    let ws = connect(url, addr).await;
    let (mut tx, mut rx) = ws.split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for i in 0..n {
            tx.send(Message::text(format!("message {i:08}"))).await.expect("send");
        }
        tx
    });
    let mut got = 0;
    while got < n {
        if let Message::Text(_) = rx.next().await.expect("open").expect("ok") {
            got += 1;
        }
    }
    drop(writer.await);
    n as f64 / start.elapsed().as_secs_f64()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let origin = echo_origin().await;
        let toml = format!(
            "listen = \"127.0.0.1:0\"\nauth_token = \"bench_token_0123456789\"\n[presets.echo]\ntargets = [\"http://{origin}\"]\n"
        );
        let config = Config::from_raw(RawConfig::from_toml(&toml).expect("toml"), &|_| None).expect("config");
        let (token, _) = config.resolve_token(&|_| None).expect("token");
        let server = Server::bind(config, token).await.expect("bind");
        let vg = server.local_addr();
        tokio::spawn(server.run(std::future::pending()));

        let direct_url = format!("ws://{origin}/ws");
        let tunnel_url = format!("ws://{vg}/echo/ws");
        let n = if quick { 200 } else { 5_000 };
        let m = if quick { 2_000 } else { 100_000 };
        let _ = round_trips(&tunnel_url, vg, 100).await; // warm up
        let mut direct = round_trips(&direct_url, origin, n).await;
        let mut tunnel = round_trips(&tunnel_url, vg, n).await;
        let (d50, d99, t50, t99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99), pct(&mut tunnel, 0.5), pct(&mut tunnel, 0.99));
        println!("round trip, direct          p50 {d50:>9.1?}  p99 {d99:>9.1?}  ({n} messages of 256 B)");
        println!("round trip, through tunnel  p50 {t50:>9.1?}  p99 {t99:>9.1?}");
        println!("added by the tunnel         p50 {:>9.1?}  p99 {:>9.1?}", t50.saturating_sub(d50), t99.saturating_sub(d99));
        let rd = rate(&direct_url, origin, m).await;
        let rtun = rate(&tunnel_url, vg, m).await;
        println!("messages/s, direct          {rd:>10.0}  ({m} pipelined echoes)");
        println!("messages/s, through tunnel  {rtun:>10.0}  ({:.0} % of direct)", rtun / rd * 100.0);
    });
}
