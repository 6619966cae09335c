//! WebSocket tunnels against loopback WebSocket origins, plain and TLS.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::client::send;
use crate::support::tls::TestCa;
use crate::support::ws_origin::{Behavior, WsOrigin};
use crate::support::{TOKEN, Veilgate, preset_at};

type Client = WebSocketStream<TcpStream>;

/// Opens a WebSocket to veilgate at `path` with extra headers.
async fn connect(vg: &Veilgate, path: &str, headers: &[(&str, &str)]) -> Result<(Client, http::HeaderMap), WsError> {
    let mut req = format!("ws://{}{path}", vg.addr).into_client_request()?;
    for (k, v) in headers {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
    }
    let tcp = TcpStream::connect(vg.addr).await.map_err(WsError::Io)?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok((ws, resp.headers().clone()))
}

async fn next_data(ws: &mut Client) -> Message {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("message in time");
        match msg.expect("stream open").expect("no error") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

#[tokio::test]
async fn echo_text_and_a_mebibyte_of_binary() {
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let (mut ws, _) = connect(&vg, "/openai/v1/realtime?model=gpt-realtime", &[]).await.unwrap();
    ws.send(Message::text("héllo 世界")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("héllo 世界"));
    let blob: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(blob));
    // Sent on in 64 KiB frames: characters split across frames arrive whole.
    let text = "é世🌍".repeat(30_000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text(text));
    let hs = &origin.handshakes()[0];
    assert_eq!(hs.uri().path_and_query().unwrap().as_str(), "/v1/realtime?model=gpt-realtime");
}

#[tokio::test]
async fn a_thousand_messages_in_order() {
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let (ws, _) = connect(&vg, "/openai/ws", &[]).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..1000 {
            tx.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        tx
    });
    for i in 0..1000 {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(msg, Message::text(format!("m{i}")));
    }
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn ping_is_answered() {
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let (mut ws, _) = connect(&vg, "/openai/ws", &[]).await.unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(msg, Message::Pong(b"are you there".to_vec().into()));
}

#[tokio::test]
async fn close_codes_pass_both_ways() {
    // client → origin
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let (mut ws, _) = connect(&vg, "/openai/ws", &[]).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    next_data(&mut ws).await;
    ws.close(Some(CloseFrame { code: CloseCode::from(4001), reason: "client done".into() })).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    tokio::time::timeout(Duration::from_secs(10), origin.close_received()).await.expect("close reached the origin");
    let seen = origin.closes();
    let frame = seen.iter().flatten().next().expect("the origin got a close frame");
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4001, "client done"));

    // origin → client
    let origin = WsOrigin::start(Behavior::CloseAfterFirst(4001, "origin done"), None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let (mut ws, _) = connect(&vg, "/openai/ws", &[]).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4001, "origin done"));
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn subprotocol_is_negotiated_and_the_handshake_is_clean() {
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let (mut ws, resp) = connect(
        &vg,
        "/openai/v1/realtime?model=m",
        &[
            ("sec-websocket-protocol", "realtime, openai-insecure-api-key.sk-secret, openai-beta.realtime-v1"),
            ("origin", "https://chat.example"),
            ("cookie", "session=1"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/140"),
            ("x-forwarded-for", "203.0.113.5"),
            ("authorization", "Bearer sk-ws"),
            ("openai-beta", "realtime=v1"),
            ("accept-language", "de"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.get("sec-websocket-protocol").unwrap(), "realtime");
    ws.send(Message::text("x")).await.unwrap();
    next_data(&mut ws).await;
    let hs = &origin.handshakes()[0];
    let h = hs.headers();
    assert_eq!(h["sec-websocket-protocol"], "realtime, openai-insecure-api-key.sk-secret, openai-beta.realtime-v1");
    assert_eq!(h["authorization"], "Bearer sk-ws");
    assert_eq!(h["openai-beta"], "realtime=v1");
    assert_eq!(h["user-agent"], "veilgate");
    for leaked in ["origin", "cookie", "x-forwarded-for", "accept-language", "sec-websocket-extensions"] {
        assert!(h.get(leaked).is_none(), "{leaked} reached the origin");
    }
    assert_eq!(h["host"], origin.addr.to_string());
}

#[tokio::test]
async fn refused_handshake_passes_its_status() {
    let origin = WsOrigin::start(Behavior::Refuse(401), None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    match connect(&vg, "/openai/ws", &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()["x-proxy-error"], "true");
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], 401);
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the handshake must fail"),
    }
}

#[tokio::test]
async fn vanishing_upstream_closes_the_client() {
    let origin = WsOrigin::start(Behavior::VanishAfterFirst, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let (mut ws, _) = connect(&vg, "/openai/ws", &[]).await.unwrap();
    ws.send(Message::text("bye")).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the client side was closed");
}

#[tokio::test]
async fn idle_tunnel_is_closed() {
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&format!("[upstream]\nidle_timeout_ms = 300\n{}", preset_at("openai", origin.addr))).await;
    let (mut ws, _) = connect(&vg, "/openai/ws", &[]).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg =
        Veilgate::start(&format!("[websocket]\nmax_message_bytes = 1024\n{}", preset_at("openai", origin.addr))).await;
    let (mut ws, _) = connect(&vg, "/openai/ws", &[]).await.unwrap();
    ws.send(Message::binary(vec![0u8; 4096])).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test]
async fn wss_preset_and_generic_route() {
    let ca = TestCa::new();
    let origin = WsOrigin::start(Behavior::Echo, Some(&ca)).await;
    let config = format!("{}[presets.live]\ntargets = [\"https://localhost:{}\"]\n", ca.config(), origin.addr.port());
    let vg = Veilgate::start(&config).await;
    let (mut ws, _) = connect(&vg, "/live/ws/google.ai.BidiGenerateContent?key=AIza-secret", &[]).await.unwrap();
    ws.send(Message::text("over TLS")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("over TLS"));
    assert_eq!(origin.handshakes()[0].uri().query(), Some("key=AIza-secret"));

    let plain = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start("[upstream]\nallow_private_targets = true").await;
    let (mut ws, _) = connect(&vg, &format!("/{TOKEN}/ws/{}/socket", plain.addr), &[]).await.unwrap();
    ws.send(Message::text("generic")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("generic"));
    // Generic tunnels obey the target check too.
    let strict = Veilgate::start("").await;
    let refused = connect(&strict, &format!("/{TOKEN}/ws/{}/socket", plain.addr), &[]).await;
    assert!(matches!(refused, Err(WsError::Http(r)) if r.status() == 403));
}

#[tokio::test]
async fn python_websockets_client_through_a_tunnel() {
    if !crate::sdk::python_has("websockets") {
        return;
    }
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/websockets_echo.py");
    let out = tokio::process::Command::new(crate::sdk::python())
        .arg(script)
        .arg(format!("ws://{}/openai/v1/realtime?model=m", vg.addr))
        .output()
        .await
        .expect("run python3");
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echo: hello from python | subprotocol: realtime");
    let hs = &origin.handshakes()[0];
    assert_eq!(hs.headers()["user-agent"], "veilgate", "the library's user-agent was replaced");
}

#[tokio::test]
async fn plain_http_to_a_tunnel_route_still_works() {
    let r = send(
        Veilgate::start("").await.addr,
        "GET",
        "/openai/ws",
        &[("upgrade", "websocket"), ("connection", "upgrade")],
        b"",
    )
    .await;
    r.assert_proxy_error(400); // no sec-websocket-key
}

/// `VmRSS` or `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("memory line");
    line.split_whitespace().nth(1).expect("number").parse().expect("KiB")
}

/// The binary with a `/openai` preset at `origin` and small messages, so
/// that what a tunnel may queue (one message plus room) stays small.
async fn tunnel_binary(origin: &WsOrigin, extra: &str) -> (tokio::process::Child, std::net::SocketAddr) {
    let config = format!(
        "listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\n[websocket]\nmax_message_bytes = 65536\n{extra}\n{}",
        preset_at("openai", origin.addr)
    );
    let running = crate::support::binary::start(&config, &[]).await;
    let (child, addr, mut lines) = (running.child, running.addr, running.lines);
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn connect_to(addr: std::net::SocketAddr, path: &str) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp).await.unwrap();
    ws
}

const FLOOD_BYTES: usize = 32 * 1024 * 1024;

#[tokio::test]
async fn a_client_flooding_pings_without_reading_does_not_grow_memory() {
    let origin = WsOrigin::start(Behavior::Echo, None).await;
    let (child, addr) = tunnel_binary(&origin, "").await;
    let pid = child.id().unwrap();
    let mut ws = connect_to(addr, "/openai/ws").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    let before = memory_kib(pid, "VmRSS");
    tokio::time::timeout(Duration::from_secs(120), crate::support::ws_origin::flood_pings(&mut ws, FLOOD_BYTES))
        .await
        .expect("veilgate keeps reading the flood")
        .unwrap();
    ws.send(Message::text("done")).await.unwrap();
    // Everything before `done` was read by veilgate once its echo is back.
    assert_eq!(next_data(&mut ws).await, Message::text("done"));
    let peak = memory_kib(pid, "VmHWM");
    eprintln!("client ping flood: RSS before {before} KiB, peak {peak} KiB");
    assert!(
        peak < before + 12 * 1024,
        "{} MiB of pings grew veilgate from {before} KiB to a peak of {peak} KiB",
        FLOOD_BYTES >> 20
    );
}

#[tokio::test]
async fn an_upstream_flooding_pings_without_reading_does_not_grow_memory() {
    let origin = WsOrigin::start(Behavior::FloodPingsAfterFirst(FLOOD_BYTES), None).await;
    let (child, addr) = tunnel_binary(&origin, "").await;
    let pid = child.id().unwrap();
    let mut ws = connect_to(addr, "/openai/ws").await;
    let before = memory_kib(pid, "VmRSS");
    ws.send(Message::text("go")).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(120), next_data(&mut ws)).await.expect("done in time");
    assert_eq!(done, Message::text("done"));
    let peak = memory_kib(pid, "VmHWM");
    eprintln!("upstream ping flood: RSS before {before} KiB, peak {peak} KiB");
    assert!(peak < before + 12 * 1024, "grew from {before} KiB to a peak of {peak} KiB");
}

#[tokio::test]
async fn a_tunnel_ends_when_the_client_leaves_and_the_upstream_stopped_reading() {
    let origin = WsOrigin::start(Behavior::StallAfterFirst, None).await;
    let (_child, addr) = tunnel_binary(&origin, "[upstream]\nidle_timeout_ms = 300").await;
    let ws = connect_to(addr, "/openai/ws").await;
    let (mut tx, rx) = ws.split();
    tx.send(Message::text("first")).await.unwrap();
    // Fill every buffer on the way to the stalled origin, then leave.
    let chunk = Message::binary(vec![7u8; 60_000]);
    while tokio::time::timeout(Duration::from_millis(500), tx.send(chunk.clone())).await.is_ok() {}
    drop((tx, rx));
    let open =
        |text: &str| text.lines().find_map(|l| l.strip_prefix("veilgate_tunnels_open ")).map(|v| v.trim().to_owned());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = send(addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await;
        if open(&metrics.text()).as_deref() == Some("0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the tunnel is still open 10 s after the client left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
