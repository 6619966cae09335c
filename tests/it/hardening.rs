//! Hostile input and faults: target safety, limits, secrets in logs, and
//! fault injection with a file-descriptor leak check.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::binary;
use crate::support::client::{open, send, send_raw};
use crate::support::origin::{RawOrigin, Step, json_response};
use crate::support::{TOKEN, Veilgate, preset_at};

#[tokio::test]
async fn non_global_targets_are_refused_on_every_path() {
    let origin = RawOrigin::json("{}").await;
    let port = origin.addr.port();
    let vg = Veilgate::start("").await;
    let fetch = Veilgate::start("force_fetch_default = true").await;
    let own = vg.addr;
    let targets = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "169.254.169.254".to_owned(),
        "10.0.0.1".to_owned(),
        "192.168.1.1".to_owned(),
        "100.64.0.1".to_owned(),
        "0.0.0.0".to_owned(),
        "198.18.0.1".to_owned(),
        "240.0.0.1".to_owned(),
        "192.0.2.1".to_owned(),
        "[::1]".to_owned(),
        "[::ffff:127.0.0.1]".to_owned(),
        "[::ffff:169.254.169.254]".to_owned(),
        "[64:ff9b::7f00:1]".to_owned(),
        "[2002:7f00:1::]".to_owned(),
        "[fd00::1]".to_owned(),
        "[fe80::1]".to_owned(),
        own.to_string(),
    ];
    for vg in [&vg, &fetch] {
        for t in &targets {
            let r = send(vg.addr, "GET", &format!("/{TOKEN}/http/{t}/latest/meta-data"), &[], b"").await;
            r.assert_proxy_error(403);
        }
    }
    assert!(origin.requests().is_empty());
}

#[tokio::test]
async fn oversized_request_head_gets_431_json() {
    let vg = Veilgate::start("[limits]\nmax_header_bytes = 8192").await;
    let big = "a".repeat(9000);
    let r = send(vg.addr, "GET", "/healthz", &[("x-big", &big)], b"").await;
    let v = r.assert_proxy_error(431);
    assert!(v["error"]["message"].as_str().unwrap().contains("max_header_bytes"));
    assert!(!r.text().contains(&big[..100]));
    let ok = send(vg.addr, "GET", "/healthz", &[("x-small", "1")], b"").await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn slow_clients_are_cut_off_without_harming_others() {
    let vg = Veilgate::start("[limits]\nheader_read_timeout_ms = 300").await;
    let mut slow = TcpStream::connect(vg.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ").await.unwrap();
    let healthy = send(vg.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(healthy.status, 200);
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow client was disconnected");
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_others_stay() {
    let vg = Veilgate::start("[limits]\nmax_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(vg.addr).await.unwrap();
        s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", vg.addr).as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let third = send(vg.addr, "GET", "/healthz", &[], b"").await;
    let v = third.assert_proxy_error(503);
    assert!(v["error"]["message"].as_str().unwrap().contains("max_connections"));
    // The first two keep working on their kept-alive connections.
    for s in &mut held {
        s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", vg.addr).as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "existing connections are unharmed");
    }
}

/// Every secret a request can carry, none of which may reach a log line.
const SECRETS: &[&str] = &[
    "sk-SECRET-authorization",
    "sk-ant-SECRET-x-api-key",
    "AIza-SECRET-goog-key",
    "SECRET-query-key",
    "openai-insecure-api-key.sk-SECRET-subprotocol",
    "secret_token_for_logs_42",
];

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let origin =
        RawOrigin::start(
            |req| {
                if req.target().contains("fail") { b"garbage\r\n\r\n".to_vec() } else { json_response("{}") }
            },
        )
        .await;
    let (_dead_held, dead) = crate::support::refused_addr();
    // Module-level directives are more specific than any cap by crate
    // name: one for every dependency that can log a head.
    let modules = "info,tungstenite::handshake::client=trace,tungstenite::protocol=trace,tokio_tungstenite=trace,\
                   hyper::proto::h1::role=trace,hyper::proto::h1::io=trace,h2::codec::framed_read=trace,\
                   h2::frame::headers=trace,hyper_util::client::legacy::pool=trace,reqwest::connect=trace,\
                   reqwest::async_impl::client=trace,rustls::client::hs=trace";
    for (format, rust_log) in [("text", "trace"), ("json", "trace"), ("text", "debug"), ("text", modules)] {
        let config = format!(
            "listen = \"127.0.0.1:0\"\nauth_token = \"secret_token_for_logs_42\"\nlog_format = \"{format}\"\n\
             [upstream]\nallow_private_targets = true\nresponse_timeout_ms = 2000\n{}\
             [presets.dead]\ntargets = [\"http://{dead}\"]\n",
            preset_at("openai", origin.addr)
        );
        let running = binary::start(&config, &[("RUST_LOG", rust_log), ("DEBUG_MODE", "true")]).await;
        let (mut child, addr, mut lines, mut log) = (running.child, running.addr, running.lines, running.log);
        let secret_headers = [
            ("authorization", "Bearer sk-SECRET-authorization"),
            ("x-api-key", "sk-ant-SECRET-x-api-key"),
            ("x-goog-api-key", "AIza-SECRET-goog-key"),
            ("sec-websocket-protocol", "realtime, openai-insecure-api-key.sk-SECRET-subprotocol"),
        ];
        let o = origin.addr;
        let t = "secret_token_for_logs_42";
        for target in [
            "/openai/v1/chat/completions?key=SECRET-query-key".to_owned(),
            "/openai/v1/fail?key=SECRET-query-key".to_owned(),
            "/dead/v1/models?key=SECRET-query-key".to_owned(),
            format!("/{t}/http/{o}/v1?key=SECRET-query-key"),
            format!("/{t}/ftp/{o}/v1?key=SECRET-query-key"),
            format!("/{t}"),
            "/wrong_token_xxxxxxxxxx/http/x/y?key=SECRET-query-key".to_owned(),
        ] {
            let r = send(addr, "POST", &target, &secret_headers, b"{\"prompt\":\"SECRET-body\"}").await;
            for s in SECRETS.iter().chain(["SECRET-body"].iter()) {
                assert!(!r.text().contains(s) || r.header("x-proxy-error").is_none(), "error body leaks {s}");
            }
        }
        let mut tunnel = secret_headers.to_vec();
        tunnel.extend([
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        send(addr, "GET", "/openai/ws?key=SECRET-query-key", &tunnel, b"").await;
        send(addr, "GET", "/openai/x", &[("x-veilgate-token", t)], b"").await;
        child.kill().await.unwrap();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            log.push_str(&line);
            log.push('\n');
        }
        assert!(log.lines().count() > 8, "{format}/{rust_log}: the run logged: {log}");
        for s in SECRETS.iter().chain(["SECRET-body"].iter()) {
            assert!(!log.contains(s), "{format}/{rust_log}: a log line holds {s}:\n{log}");
        }
    }
}

/// The number of open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Waits (bounded) until the fd count falls to `target`; returns the last count.
async fn settle_fds(target: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = open_fds();
        if n <= target || Instant::now() > deadline {
            return n;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_thousand_faulty_requests_leak_nothing() {
    let faults: Vec<(&str, Vec<Step>)> = vec![
        ("reset before head", vec![Step::Reset]),
        ("close before head", vec![Step::Close]),
        ("reset after head", vec![Step::text("HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\npart"), Step::Reset]),
        (
            "truncated chunk",
            vec![Step::text("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nshort"), Step::Close],
        ),
        (
            "invalid chunk size",
            vec![Step::text("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nxyz\r\n"), Step::Close],
        ),
        (
            "both framings",
            vec![Step::text("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"), Step::Close],
        ),
        (
            "oversized head",
            vec![Step::Write(format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(5000)).into_bytes()), Step::Close],
        ),
        ("stall", vec![Step::Sleep(Duration::from_millis(400)), Step::Close]),
    ];
    let mut config = String::from("[upstream]\nresponse_timeout_ms = 150\n[limits]\nmax_response_head_bytes = 4096\n");
    let mut origins = Vec::new();
    for (i, (_, steps)) in faults.iter().enumerate() {
        let steps = steps.clone();
        let origin = RawOrigin::scripted(move |_| steps.clone()).await;
        config.push_str(&preset_at(&format!("fault{i}"), origin.addr));
        origins.push(origin);
    }
    let (_refused_held, refused) = crate::support::refused_addr();
    config.push_str(&format!("[presets.refused]\ntargets = [\"http://{refused}\"]\n"));
    let sse = RawOrigin::scripted(|_| {
        vec![
            Step::text("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"),
            Step::text("6\r\ndata:\n\n\r\n"),
            Step::Sleep(Duration::from_millis(300)),
            Step::Close,
        ]
    })
    .await;
    config.push_str(&preset_at("sse", sse.addr));
    let vg = Veilgate::start(&config).await;

    // Warm up once through every path, then take the baseline.
    assert_eq!(send(vg.addr, "GET", "/healthz", &[], b"").await.status, 200);
    let baseline = open_fds();

    let mut total = 0;
    let kinds = faults.len() + 2;
    while total < 1000 {
        let mut batch = Vec::new();
        for j in 0..50 {
            let k = (total + j) % kinds;
            let addr = vg.addr;
            batch.push(tokio::spawn(async move {
                if k == kinds - 1 {
                    // A client that leaves mid-stream.
                    let mut s = open(addr, "GET", "/sse/stream", &[]).await;
                    let _ = s.next().await;
                    drop(s);
                    return;
                }
                let preset = if k == kinds - 2 { "refused".to_owned() } else { format!("fault{k}") };
                let r = send_raw(
                    addr,
                    format!("POST /{preset}/v1 HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}")
                        .as_bytes(),
                    false,
                )
                .await;
                // Either a JSON error before the head, or an aborted body.
                assert!(r.header("x-proxy-error") == Some("true") || !r.complete, "fault {k} looked fine");
            }));
        }
        for t in batch {
            t.await.unwrap();
        }
        total += 50;
    }
    assert_eq!(send(vg.addr, "GET", "/healthz", &[], b"").await.status, 200, "still serving");
    let during = open_fds();
    let after = settle_fds(baseline).await;
    eprintln!("fds: {baseline} before, {during} right after the run, {after} settled");
    assert!(after <= baseline, "file descriptors leaked: {baseline} before, {after} after 1000 faulty requests");
}
