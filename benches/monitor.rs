//! The stream monitors' cost: SSE parser and Gemini session throughput
//! (MB/s), and the latency each monitor (Gemini §5, OpenAI chat
//! completions §14) adds per forwarded event through a running veilgate
//! (monitored preset vs the same stream unmonitored, alternating), all on
//! loopback. veilgate runs on the bench's one thread first, which shows
//! what the monitor itself costs, then on two workers of its own, where
//! the machine's cross-CPU wake-ups come on top (alike for both streams,
//! but tens of µs and varying from run to run on a VM).
//!
//! `cargo bench --bench monitor` (add `-- --quick` for a smoke run).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use veilgate::config::{Config, RawConfig};
use veilgate::monitor::gemini::Session;
use veilgate::monitor::sse::{Item, SseParser};
use veilgate::server::Server;

fn event(i: usize) -> String {
    format!(
        "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"Chunk {i}: the sky looks blue because air molecules scatter short wavelengths of sunlight more than long ones, so blue light reaches us from every direction.\"}}],\"role\":\"model\"}},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":9,\"candidatesTokenCount\":{i},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-2.5-pro\",\"responseId\":\"r-1\"}}\r\n\r\n",
        i + 9
    )
}

/// An OpenAI chat-completions chunk of about the same size.
fn chunk(i: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Chunk {i}: the sky looks blue because air molecules scatter short wavelengths of sunlight more than long ones, so blue light reaches us from every direction.\"}},\"finish_reason\":null}}]}}\r\n\r\n"
    )
}

fn throughput(quick: bool) {
    let stream: String = (0..if quick { 2_000 } else { 20_000 }).map(event).collect();
    let bytes = stream.as_bytes();
    let rounds = if quick { 2 } else { 10 };
    let mb = (bytes.len() * rounds) as f64 / 1e6;

    let started = Instant::now();
    let mut events = 0;
    for _ in 0..rounds {
        let mut p = SseParser::default();
        for piece in bytes.chunks(16 * 1024) {
            p.push(piece);
            while let Ok(Some(item)) = p.next_item() {
                if let Item::Event(_) = item {
                    events += 1;
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("sse parser           {:>8.0} MB/s  {:>10.0} events/s", mb / secs, events as f64 / secs);

    let started = Instant::now();
    let mut forwarded = 0usize;
    for _ in 0..rounds {
        let mut p = SseParser::default();
        let mut s = Session::new(true);
        s.begin_attempt();
        for piece in bytes.chunks(16 * 1024) {
            p.push(piece);
            while let Ok(Some(item)) = p.next_item() {
                forwarded += s.on_item(item).forward.iter().map(Bytes::len).sum::<usize>();
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("parser + session     {:>8.0} MB/s  (JSON inspected per event; {forwarded} bytes forwarded)", mb / secs);
}

/// An origin that sends one event each time the bench adds a permit, and
/// records when it wrote it.
/// The request's `n=` query parameter says how many events to send.
async fn paced_origin(gate: Arc<Semaphore>, sent: Arc<Mutex<Vec<Instant>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (gate, sent) = (Arc::clone(&gate), Arc::clone(&sent));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&seen);
                let openai = text.contains("/chat/completions");
                let events: usize = text
                    .split(['?', '&', ' '])
                    .find_map(|p| p.strip_prefix("n="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let _ = s.write_all(head.as_bytes()).await;
                for i in 0..events {
                    gate.acquire().await.expect("gate").forget();
                    let e = if openai { chunk(i) } else { event(i) };
                    let chunk = format!("{:x}\r\n{e}\r\n", e.len());
                    sent.lock().expect("lock").push(Instant::now());
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let last = if openai {
                    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\r\n\r\n"
                } else {
                    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\".\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}]}\r\n\r\n"
                };
                let _ = s.write_all(format!("{:x}\r\n{last}\r\n0\r\n\r\n", last.len()).as_bytes()).await;
            });
        }
    });
    addr
}

/// One-way latency per event (origin write → client read), lock-step.
async fn latencies(
    vg: SocketAddr,
    preset: &str,
    openai: bool,
    events: usize,
    gate: &Semaphore,
    sent: &Mutex<Vec<Instant>>,
) -> Vec<Duration> {
    sent.lock().expect("lock").clear();
    let (path, body) = if openai {
        (
            format!("/{preset}/v1/chat/completions?n={events}"),
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Why is the sky blue?"}]}"#,
        )
    } else {
        (
            format!("/{preset}/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&n={events}"),
            r#"{"contents":[{"role":"user","parts":[{"text":"Why is the sky blue?"}]}]}"#,
        )
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {vg}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(vg).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 65536];
    let mut pending = Vec::new();
    let mut out = Vec::with_capacity(events);
    let mut got = 0;
    gate.add_permits(1);
    while got < events {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "stream ended early");
        let now = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        // Count complete events ("\r\n\r\n" ends each) that arrived.
        while let Some(pos) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let is_event = pending[..pos].windows(5).any(|w| w == b"data:");
            pending.drain(..pos + 4);
            if is_event && got < events {
                let t = sent.lock().expect("lock")[got];
                out.push(now - t);
                got += 1;
                if got < events {
                    gate.add_permits(1);
                }
            }
        }
    }
    out
}

/// Runs veilgate: on the bench's own thread (`workers == 0`: no wake-up
/// ever crosses CPUs, so what is added is the monitor's own work), or on a
/// runtime of its own, apart from the bench's origin and client: one
/// thread (what `veilgate` starts on one core) or several workers.
async fn serve(config: Config, token: veilgate::auth::Token, workers: usize) -> SocketAddr {
    if workers == 0 {
        let server = Server::bind(config, token).await.expect("bind");
        let addr = server.local_addr();
        tokio::spawn(server.run(std::future::pending()));
        return addr;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = if workers == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
        }
        .expect("runtime");
        rt.block_on(async move {
            let server = Server::bind(config, token).await.expect("bind");
            tx.send(server.local_addr()).expect("addr");
            server.run(std::future::pending()).await
        })
    });
    rx.recv().expect("veilgate started")
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// How many rounds the plain and the monitored stream alternate in, so
/// that drift of the machine over the run falls on both alike.
const ROUNDS: usize = 5;

async fn added_latency(quick: bool, workers: usize) {
    let events = if quick { 500 } else { 5_000 };
    let gate = Arc::new(Semaphore::new(0));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let origin = paced_origin(Arc::clone(&gate), Arc::clone(&sent)).await;
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nauth_token = \"bench_token_0123456789\"\n\
         [presets.gemini]\ntargets = [\"http://{origin}\"]\n\
         [presets.watched]\ntargets = [\"http://{origin}\"]\nprotocol = \"openai\"\ncontinue_streams = true\n\
         [presets.plain]\ntargets = [\"http://{origin}\"]\n"
    );
    let config = Config::from_raw(RawConfig::from_toml(&toml).expect("toml"), &|_| None).expect("config");
    let (token, _) = config.resolve_token(&|_| None).expect("token");
    let vg = serve(config, token, workers).await;
    let runtime = match workers {
        0 => "the bench's thread".to_owned(),
        1 => "a thread of its own".to_owned(),
        n => format!("{n} workers of its own"),
    };
    println!("veilgate on {runtime}:");

    // Warm up each path (pool, caches), then measure each.
    for (preset, openai) in [("plain", false), ("gemini", false), ("plain", true), ("watched", true)] {
        let _ = latencies(vg, preset, openai, events.min(100), &gate, &sent).await;
    }
    for (name, preset, openai) in [("gemini monitor", "gemini", false), ("openai monitor", "watched", true)] {
        let (mut plain, mut monitored) = (Vec::new(), Vec::new());
        // A stream's first event carries the response head's work and its
        // last the end's: steady-state events only.
        let inner = |v: Vec<Duration>| v[1..v.len() - 1].to_vec();
        for _ in 0..ROUNDS {
            plain.extend(inner(latencies(vg, "plain", openai, events / ROUNDS + 2, &gate, &sent).await));
            monitored.extend(inner(latencies(vg, preset, openai, events / ROUNDS + 2, &gate, &sent).await));
        }
        let (p50a, p99a) = (pct(&mut plain, 0.5), pct(&mut plain, 0.99));
        let (p50b, p99b) = (pct(&mut monitored, 0.5), pct(&mut monitored, 0.99));
        println!("  event latency via veilgate, unmonitored    p50 {p50a:>9.1?}  p99 {p99a:>9.1?}  ({events} events)");
        println!("  event latency via veilgate, {name:<15}p50 {p50b:>9.1?}  p99 {p99b:>9.1?}");
        println!(
            "  added by the {name:<29}p50 {:>9.1?}  p99 {:>9.1?}",
            p50b.saturating_sub(p50a),
            p99b.saturating_sub(p99a)
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let _ = rustls::crypto::ring::default_provider().install_default();
    throughput(quick);
    // The bench's origin and client on one thread; veilgate on that same
    // thread (the monitor's own cost per event), then on two workers.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for workers in [0, 2] {
        rt.block_on(added_latency(quick, workers));
    }
}
