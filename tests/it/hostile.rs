//! Hostile input, round 2: each test here failed before its fix.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::support::client::{parse_reply, send, send_raw};
use crate::support::origin::{RawOrigin, Step, json_response};
use crate::support::tls::TestCa;
use crate::support::{TOKEN, Veilgate, preset_at};

#[tokio::test]
async fn a_connection_pooled_for_a_preset_never_serves_a_checked_generic_request() {
    let origin = RawOrigin::json("{\"ok\":true}").await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let trusted = send(vg.addr, "GET", "/openai/v1/models", &[("connection", "keep-alive")], b"").await;
    assert_eq!(trusted.status, 200);
    // The preset's connection to the loopback origin is pooled now; the
    // generic route must still refuse that private address.
    let generic = send(vg.addr, "GET", &format!("/{TOKEN}/http/{}/v1/models", origin.addr), &[], b"").await;
    generic.assert_proxy_error(403);
    assert_eq!(origin.requests().len(), 1, "the generic request reached the private origin");
}

/// Waits until the server closes `stream` (EOF or reset) and returns what
/// it sent before; panics when it is still open after 10 s.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection is still open 10 s later");
    got
}

const QUICK: &str = "[limits]\nheader_read_timeout_ms = 300\n";

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let vg = Veilgate::start(QUICK).await;
    let mut silent = TcpStream::connect(vg.addr).await.unwrap();
    closed_by_server(&mut silent).await;
}

#[tokio::test]
async fn a_kept_alive_connection_idle_after_its_response_is_closed() {
    let vg = Veilgate::start(QUICK).await;
    let mut s = TcpStream::connect(vg.addr).await.unwrap();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", vg.addr).as_bytes()).await.unwrap();
    let got = closed_by_server(&mut s).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn a_request_body_that_stops_is_cut_with_408() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!("{QUICK}{}", preset_at("openai", origin.addr))).await;
    let mut s = TcpStream::connect(vg.addr).await.unwrap();
    let head = format!("POST /openai/v1/chat HTTP/1.1\r\nhost: {}\r\ncontent-length: 100\r\n\r\n{{\"a\":", vg.addr);
    s.write_all(head.as_bytes()).await.unwrap();
    let got = closed_by_server(&mut s).await;
    let reply = parse_reply(&got, false);
    reply.assert_proxy_error(408);
    assert!(origin.requests().is_empty(), "a cut request reached the upstream");
}

fn tls_config(ca: &TestCa) -> String {
    format!("[tls]\ncert_file = {:?}\nkey_file = {:?}\n", ca.server_cert_file, ca.server_key_file)
}

async fn tls_client(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[alpn]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn an_idle_tls_connection_and_an_idle_http2_connection_are_closed() {
    let ca = TestCa::new();
    let vg = Veilgate::start(&format!("{QUICK}{}", tls_config(&ca))).await;
    // TLS handshake, then nothing.
    let mut tls = tls_client(&ca, vg.addr, b"http/1.1").await;
    closed_by_server(&mut tls).await;
    // An HTTP/2 connection that opens no stream: GOAWAY, then the end.
    let tls = tls_client(&ca, vg.addr, b"h2").await;
    let (_sender, conn): (hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, _) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open 10 s later");
}

#[tokio::test]
async fn the_tls_listener_over_capacity_answers_inside_tls() {
    let ca = TestCa::new();
    let vg = Veilgate::start(&format!("[limits]\nmax_connections = 1\n{}", tls_config(&ca))).await;
    let mut first = tls_client(&ca, vg.addr, b"http/1.1").await;
    first
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: localhost:{}\r\n\r\n", vg.addr.port()).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut second = tls_client(&ca, vg.addr, b"http/1.1").await;
    let got = closed_by_server(&mut second).await;
    parse_reply(&got, false).assert_proxy_error(503);
}

#[tokio::test]
async fn a_head_far_over_the_limit_and_garbage_get_json_errors() {
    let vg = Veilgate::start("").await;
    let big = "a".repeat(200_000);
    let huge = send(vg.addr, "GET", "/healthz", &[("x-big", &big)], b"").await;
    huge.assert_proxy_error(431);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nbad header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let reply = send_raw(vg.addr, garbage, false).await;
        reply.assert_proxy_error(400);
    }
    // The server is still there.
    assert_eq!(send(vg.addr, "GET", "/healthz", &[], b"").await.status, 200);
}

#[tokio::test]
async fn http2_streams_per_connection_are_limited() {
    let vg = Veilgate::start("[limits]\nmax_streams_per_connection = 10").await;
    let tcp = TcpStream::connect(vg.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/healthz", vg.addr)).body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // By the first response the server's SETTINGS have arrived.
    assert_eq!(client.current_max_send_streams(), 10);
}

#[tokio::test]
async fn upstream_sockets_are_bounded_as_a_whole() {
    let origin =
        RawOrigin::scripted(|_| vec![Step::Sleep(Duration::from_millis(200)), Step::Write(json_response("{}"))]).await;
    let vg =
        Veilgate::start(&format!("[limits]\nmax_upstream_connections = 3\n{}", preset_at("openai", origin.addr))).await;
    let requests = (0..10).map(|_| send(vg.addr, "GET", "/openai/v1/models", &[], b""));
    for reply in futures_util::future::join_all(requests).await {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert!(origin.peak_connections() <= 3, "{} upstream connections at once", origin.peak_connections());
}

#[tokio::test]
async fn a_request_that_finds_no_upstream_slot_in_time_gets_503() {
    let release = Arc::new(Semaphore::new(0));
    let gate = Arc::clone(&release);
    let origin =
        RawOrigin::scripted(move |_| vec![Step::Wait(Arc::clone(&gate)), Step::Write(json_response("{}"))]).await;
    let config = format!(
        "[upstream]\nconnect_timeout_ms = 200\n[limits]\nmax_upstream_connections = 1\n{}",
        preset_at("openai", origin.addr)
    );
    let vg = Veilgate::start(&config).await;
    let first = tokio::spawn(send(vg.addr, "GET", "/openai/v1/a", &[], b""));
    while origin.requests().is_empty() {
        tokio::task::yield_now().await;
    }
    let second = send(vg.addr, "GET", "/openai/v1/b", &[], b"").await;
    let v = second.assert_proxy_error(503);
    assert!(v["error"]["message"].as_str().unwrap().contains("max_upstream_connections"));
    release.add_permits(1);
    assert_eq!(first.await.unwrap().status, 200);
}

/// Responses the socket transport refuses as an upstream error (502).
fn refused_responses() -> Vec<(&'static str, Vec<u8>)> {
    let big = format!("x-big: {}\r\n", "b".repeat(100_000));
    vec![
        (
            "CL and TE",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        ("chunked, identity", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, identity\r\n\r\nhello".to_vec()),
        ("head over the limit", format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{big}\r\nok").into_bytes()),
        (
            "unrequested 101",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".to_vec(),
        ),
    ]
}

#[tokio::test]
async fn both_transports_refuse_bad_framing_big_heads_and_an_unrequested_101() {
    for (what, bytes) in refused_responses() {
        let origin = RawOrigin::scripted(move |_| vec![Step::Write(bytes.clone()), Step::Close]).await;
        for (transport, config) in [
            ("socket", preset_at("openai", origin.addr)),
            ("fetch", format!("force_fetch_default = true\n{}", preset_at("openai", origin.addr))),
        ] {
            let vg = Veilgate::start(&config).await;
            let reply = send(vg.addr, "GET", "/openai/v1/models", &[], b"").await;
            assert_eq!(reply.status, 502, "{transport} passed on {what}: {}", reply.text());
            reply.assert_proxy_error(502);
        }
    }
}

#[tokio::test]
async fn a_host_that_is_not_exactly_an_authority_is_refused() {
    let vg = Veilgate::start("").await;
    for host in ["[::1]evil.example", "[::1]:80evil", "localhost:80:80", "127.0.0.1@evil.example"] {
        let reply = send(vg.addr, "GET", "/healthz", &[("host", host)], b"").await;
        assert_eq!(reply.status, 403, "{host}: {}", reply.text());
    }
    assert_eq!(send(vg.addr, "GET", "/healthz", &[("host", "[::1]:8080")], b"").await.status, 200);
}

#[tokio::test]
async fn first_contact_gets_404_naming_the_closest_preset() {
    let vg = Veilgate::start("").await;
    let r = send(vg.addr, "POST", "/anthropic/v1/messages", &[], b"{}").await;
    let v = r.assert_proxy_error(404);
    assert_eq!(v["error"]["message"], "no preset named \"anthropic\"; did you mean /claude?");
    send(vg.addr, "GET", "/favicon.ico", &[], b"").await.assert_proxy_error(404);
    send(vg.addr, "GET", "/wrong_token_0123456789/https/h.example/x", &[], b"").await.assert_proxy_error(401);
}
