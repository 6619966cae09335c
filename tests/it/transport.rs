//! The socket transport against loopback origins (plain, TLS, raw bytes):
//! streaming, framing, keep-alive, replay rules, timeouts and failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::support::client::{End, open, send};
use crate::support::origin::{RawOrigin, Step, json_response};
use crate::support::tls::TestCa;
use crate::support::{Veilgate, preset_at};

const SSE_CHUNKED_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
const SSE_CLOSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

fn event(i: usize) -> String {
    format!("data: {{\"i\":{i}}}\n\n")
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The body's events, framed for the head.
fn framed(chunked: bool, data: &str) -> Step {
    if chunked { Step::Write(chunk(data.as_bytes())) } else { Step::text(data) }
}

async fn healthy(vg: &Veilgate) {
    let r = send(vg.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200, "veilgate must keep serving");
}

/// Lock-step: the origin sends event i+1 only after the client has
/// received event i, so anything that buffered would deadlock and time out.
#[tokio::test]
async fn sse_events_are_forwarded_one_by_one() {
    for chunked in [true, false] {
        let gate = Arc::new(Semaphore::new(0));
        let g = Arc::clone(&gate);
        let origin = RawOrigin::scripted(move |_| {
            let mut steps = vec![Step::text(if chunked { SSE_CHUNKED_HEAD } else { SSE_CLOSE_HEAD })];
            for i in 0..5 {
                steps.push(Step::Wait(Arc::clone(&g)));
                steps.push(framed(chunked, &event(i)));
            }
            steps.push(if chunked { Step::text("0\r\n\r\n") } else { Step::Close });
            steps
        })
        .await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        let mut s = open(vg.addr, "GET", "/openai/v1/stream", &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.headers.get("content-type").unwrap(), "text/event-stream");
        for i in 0..5 {
            gate.add_permits(1);
            let got = tokio::time::timeout(Duration::from_secs(10), s.read_until(b"\n\n"))
                .await
                .unwrap_or_else(|_| panic!("event {i} was held back (chunked: {chunked})"));
            assert_eq!(got.unwrap(), event(i).into_bytes());
        }
        assert_eq!(s.finish().await, (Vec::new(), End::Clean), "chunked: {chunked}");
    }
}

/// Events paced 200 ms apart by the origin arrive paced, not in a burst.
#[tokio::test]
async fn sse_paced_events_arrive_paced() {
    for chunked in [true, false] {
        let origin = RawOrigin::scripted(move |_| {
            let mut steps = vec![Step::text(if chunked { SSE_CHUNKED_HEAD } else { SSE_CLOSE_HEAD })];
            for i in 0..5 {
                if i > 0 {
                    steps.push(Step::Sleep(Duration::from_millis(200)));
                }
                steps.push(framed(chunked, &event(i)));
            }
            steps.push(if chunked { Step::text("0\r\n\r\n") } else { Step::Close });
            steps
        })
        .await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        let mut s = open(vg.addr, "GET", "/openai/v1/stream", &[]).await;
        let mut arrivals = Vec::new();
        for i in 0..5 {
            assert_eq!(s.read_until(b"\n\n").await.unwrap(), event(i).into_bytes());
            arrivals.push(Instant::now());
        }
        // 800 ms of pacing at the origin; a buffering proxy would deliver
        // everything at once at the end.
        let spread = arrivals[4] - arrivals[0];
        assert!(spread >= Duration::from_millis(600), "events arrived in a burst: {spread:?}");
        assert_eq!(s.finish().await.1, End::Clean);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn twenty_megabyte_bodies_arrive_identical() {
    const LEN: usize = 20 * 1024 * 1024;
    let data = Arc::new(pattern(LEN));
    for framing in ["length", "chunked", "close"] {
        let d = Arc::clone(&data);
        let origin = RawOrigin::scripted(move |req| {
            // Echo a digest of what arrived in a header, then the big body.
            let ok = if req.body.as_slice() == d.as_slice() { "yes" } else { "no" };
            match framing {
                "length" => {
                    let mut out = format!("HTTP/1.1 200 OK\r\nx-request-intact: {ok}\r\ncontent-length: {LEN}\r\n\r\n")
                        .into_bytes();
                    out.extend_from_slice(&d);
                    vec![Step::Write(out)]
                }
                "chunked" => {
                    let mut steps = vec![Step::Write(
                        format!("HTTP/1.1 200 OK\r\nx-request-intact: {ok}\r\ntransfer-encoding: chunked\r\n\r\n")
                            .into_bytes(),
                    )];
                    for piece in d.chunks(100_003) {
                        steps.push(Step::Write(chunk(piece)));
                    }
                    steps.push(Step::text("0\r\n\r\n"));
                    steps
                }
                _ => {
                    let mut out = format!("HTTP/1.1 200 OK\r\nx-request-intact: {ok}\r\n\r\n").into_bytes();
                    out.extend_from_slice(&d);
                    vec![Step::Write(out), Step::Close]
                }
            }
        })
        .await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        let reply = send(vg.addr, "POST", "/openai/v1/files", &[], &data).await;
        assert_eq!(reply.status, 200, "{framing}");
        assert_eq!(reply.header("x-request-intact"), Some("yes"), "{framing}: request body");
        assert!(reply.complete, "{framing}");
        assert_eq!(reply.body.len(), LEN, "{framing}");
        assert!(reply.body == *data, "{framing}: response body differs");
    }
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let origin = RawOrigin::json("{\"ok\":1}").await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    for i in 0..50 {
        let r = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text(), "{\"ok\":1}");
    }
    assert_eq!(origin.requests().len(), 50);
    assert_eq!(origin.connection_count(), 1, "keep-alive must reuse the upstream connection");
}

/// An idle pooled connection that the upstream closed is noticed before a
/// request is written to it, so even a POST goes through (on a new one).
#[tokio::test]
async fn connection_closed_while_idle_is_not_used() {
    let closed = Arc::new(Notify::new());
    let c = Arc::clone(&closed);
    let origin =
        RawOrigin::scripted(move |_| vec![Step::Write(json_response("{}")), Step::CloseAndNotify(Arc::clone(&c))])
            .await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    for i in 0..3 {
        let r = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        closed.notified().await;
    }
    assert_eq!(origin.requests().len(), 3, "each POST was sent exactly once");
    assert_eq!(origin.connection_count(), 3);
}

#[tokio::test]
async fn connection_close_and_http10_are_not_reused() {
    for head in [
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let origin = RawOrigin::scripted(move |_| vec![Step::text(head), Step::Hang]).await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        for _ in 0..3 {
            let r = send(vg.addr, "GET", "/openai/x", &[], b"").await;
            assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        }
        assert_eq!(origin.connection_count(), 3, "{head:?}");
    }
}

#[tokio::test]
async fn interim_103_is_skipped() {
    let origin = RawOrigin::scripted(|_| {
        vec![
            Step::text("HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"),
            Step::Write(json_response("{\"final\":true}")),
        ]
    })
    .await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let r = send(vg.addr, "GET", "/openai/x", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"final\":true}");
    assert_eq!(r.header("link"), None);
}

#[tokio::test]
async fn head_and_204_carry_no_body_and_keep_the_connection() {
    let origin = RawOrigin::scripted(|req| {
        let resp = match req.request_line().split(' ').next() {
            Some("HEAD") => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n\r\n",
            Some("DELETE") => "HTTP/1.1 204 No Content\r\n\r\n",
            _ => "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone",
        };
        vec![Step::text(resp)]
    })
    .await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let head = send(vg.addr, "HEAD", "/openai/x", &[], b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1234"));
    assert!(head.body.is_empty());
    let deleted = send(vg.addr, "DELETE", "/openai/x", &[], b"").await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    let get = send(vg.addr, "GET", "/openai/x", &[], b"").await;
    assert_eq!(get.text(), "done");
    assert_eq!(origin.connection_count(), 1, "bodiless responses leave the connection reusable");
}

#[tokio::test]
async fn broken_heads_give_502_and_the_server_keeps_serving() {
    let cases: &[(&str, &str)] = &[
        ("garbage", "this is not http\r\n\r\n"),
        (
            "both framings",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("two lengths", "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"),
        ("gzip coding", "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("empty reply", ""),
    ];
    for (what, bytes) in cases {
        let origin = RawOrigin::scripted(move |_| vec![Step::text(bytes), Step::Close]).await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        let r = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await;
        let v = r.assert_proxy_error(502);
        assert!(v["error"]["transports"]["socket"]["error"].is_string(), "{what}");
        assert_eq!(origin.requests().len(), 1, "{what}: a POST is never replayed");
        healthy(&vg).await;
    }
}

#[tokio::test]
async fn oversized_head_gives_502() {
    let origin = RawOrigin::scripted(|_| {
        let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "a".repeat(2000));
        vec![Step::text(&big)]
    })
    .await;
    let vg =
        Veilgate::start(&format!("[limits]\nmax_response_head_bytes = 1024\n{}", preset_at("openai", origin.addr)))
            .await;
    let r = send(vg.addr, "GET", "/openai/x", &[], b"").await;
    let v = r.assert_proxy_error(502);
    assert!(v["error"]["message"].as_str().unwrap().contains("1024"), "{v}");
}

/// After the head was sent, a broken body must abort the response: the
/// client sees an incomplete body, never a clean end.
#[tokio::test]
async fn broken_bodies_abort_the_response() {
    // (case, steps, whether "hello" must reach the client: after an RST the
    // kernel may drop received bytes, so there it is allowed to be missing)
    let cases: Vec<(&str, Vec<Step>, bool)> = vec![
        (
            "invalid chunk size",
            vec![
                Step::text("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n"),
                Step::Hang,
            ],
            true,
        ),
        (
            "reset mid chunked body",
            vec![Step::text("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"), Step::Reset],
            false,
        ),
        (
            "reset mid length body",
            vec![Step::text("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello"), Step::Reset],
            false,
        ),
        (
            "EOF mid length body",
            vec![Step::text("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello"), Step::Close],
            true,
        ),
        (
            "EOF mid chunked body",
            vec![Step::text("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"), Step::Close],
            true,
        ),
    ];
    for (what, steps, partial_arrives) in cases {
        let origin = RawOrigin::scripted(move |_| steps.clone()).await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        let mut s = open(vg.addr, "GET", "/openai/x", &[]).await;
        assert_eq!(s.status, 200, "{what}");
        let (body, end) = tokio::time::timeout(Duration::from_secs(10), s.finish()).await.expect(what);
        assert_eq!(end, End::Aborted, "{what}: must not look complete");
        if partial_arrives {
            assert_eq!(body, b"hello", "{what}: bytes before the fault are delivered");
        } else {
            assert!(b"hello".starts_with(&body), "{what}");
        }
        healthy(&vg).await;
    }
}

#[tokio::test]
async fn idle_body_is_aborted_after_idle_timeout() {
    let origin = RawOrigin::scripted(|_| {
        vec![Step::text("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"), Step::Hang]
    })
    .await;
    let vg = Veilgate::start(&format!("[upstream]\nidle_timeout_ms = 300\n{}", preset_at("openai", origin.addr))).await;
    let mut s = open(vg.addr, "GET", "/openai/x", &[]).await;
    let (body, end) = tokio::time::timeout(Duration::from_secs(10), s.finish()).await.expect("idle timeout fired");
    assert_eq!((body.as_slice(), end), (&b"hello"[..], End::Aborted));
}

#[tokio::test]
async fn client_going_away_closes_the_upstream_connection() {
    let closed = Arc::new(Notify::new());
    let c = Arc::clone(&closed);
    let origin = RawOrigin::scripted(move |_| {
        vec![Step::text(SSE_CHUNKED_HEAD), Step::Write(chunk(event(0).as_bytes())), Step::AwaitClose(Arc::clone(&c))]
    })
    .await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let mut s = open(vg.addr, "GET", "/openai/v1/stream", &[]).await;
    assert_eq!(s.read_until(b"\n\n").await.unwrap(), event(0).into_bytes());
    drop(s);
    tokio::time::timeout(Duration::from_secs(10), closed.notified())
        .await
        .expect("the origin saw its connection close after the client left");
}

#[tokio::test]
async fn missing_head_gives_504_without_replay() {
    let origin = RawOrigin::scripted(|_| vec![Step::Hang]).await;
    let vg =
        Veilgate::start(&format!("[upstream]\nresponse_timeout_ms = 300\n{}", preset_at("openai", origin.addr))).await;
    for method in ["POST", "GET"] {
        let r = send(vg.addr, method, "/openai/v1/chat/completions", &[], b"").await;
        let v = r.assert_proxy_error(504);
        assert_eq!(v["error"]["status"], "DEADLINE_EXCEEDED");
    }
    assert_eq!(origin.requests().len(), 2, "each request reached the origin exactly once");
    assert_eq!(origin.connection_count(), 2);
}

/// The origin accepts a second request on a kept-alive connection and
/// closes without a byte. GET is sent once more on a fresh connection;
/// POST is not (the upstream may have acted on it).
#[tokio::test]
async fn zero_byte_eof_on_a_reused_connection_replays_only_idempotent_requests() {
    for (method, replayed) in [("GET", true), ("POST", false)] {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        let origin = RawOrigin::scripted(move |_| {
            match s.fetch_add(1, Ordering::SeqCst) {
                1 => vec![Step::Close], // second request: vanish without answering
                _ => vec![Step::Write(json_response("{}"))],
            }
        })
        .await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        assert_eq!(send(vg.addr, method, "/openai/a", &[], b"").await.status, 200);
        let second = send(vg.addr, method, "/openai/b", &[], b"").await;
        let reqs = origin.requests();
        if replayed {
            assert_eq!(second.status, 200, "{method}");
            assert_eq!(reqs.len(), 3);
            assert_eq!((reqs[1].target(), reqs[1].connection), ("/b", 0));
            assert_eq!((reqs[2].target(), reqs[2].connection), ("/b", 1), "sent again on a fresh connection");
        } else {
            second.assert_proxy_error(502);
            assert_eq!(reqs.len(), 2, "{method} must not be sent twice");
        }
    }
}

#[tokio::test]
async fn tls_origin_trusted_through_extra_ca_file() {
    let ca = TestCa::new();
    let origin = RawOrigin::scripted_tls(&ca, |_| vec![Step::Write(json_response("{\"tls\":true}"))]).await;
    let config = format!("{}[presets.openai]\ntargets = [\"https://127.0.0.1:{}\"]\n", ca.config(), origin.addr.port());
    let vg = Veilgate::start(&config).await;
    for _ in 0..3 {
        let r =
            send(vg.addr, "POST", "/openai/v1/chat/completions", &[("authorization", "Bearer sk-tls")], b"{}").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "{\"tls\":true}");
    }
    let seen = origin.requests();
    assert_eq!(seen[0].header("host").as_deref(), Some(format!("127.0.0.1:{}", origin.addr.port()).as_str()));
    assert_eq!(seen[0].sni, None, "no SNI for an IP literal");
    assert_eq!(origin.connection_count(), 1, "TLS connections are pooled too");

    // The same origin is refused without the extra CA.
    let untrusted =
        Veilgate::start(&format!("[presets.openai]\ntargets = [\"https://127.0.0.1:{}\"]\n", origin.addr.port())).await;
    let r = send(untrusted.addr, "GET", "/openai/x", &[], b"").await;
    let v = r.assert_proxy_error(502);
    let socket = v["error"]["transports"]["socket"]["error"].as_str().unwrap();
    assert!(socket.contains("TLS") && socket.contains("UnknownIssuer"), "{v}");
    let fetch = v["error"]["transports"]["fetch"]["error"].as_str().unwrap();
    assert!(fetch.contains("UnknownIssuer"), "{v}");
}

/// A close-delimited body over TLS ends cleanly only with close_notify;
/// a bare TCP close is a truncation.
#[tokio::test]
async fn tls_close_delimited_body_needs_close_notify() {
    let ca = TestCa::new();
    for (close, want) in [(Step::Close, End::Clean), (Step::CloseAbruptly, End::Aborted)] {
        let origin = RawOrigin::scripted_tls(&ca, move |_| {
            vec![Step::text("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it"), close.clone()]
        })
        .await;
        let config =
            format!("{}[presets.openai]\ntargets = [\"https://localhost:{}\"]\n", ca.config(), origin.addr.port());
        let vg = Veilgate::start(&config).await;
        let mut s = open(vg.addr, "GET", "/openai/x", &[]).await;
        let (body, end) = tokio::time::timeout(Duration::from_secs(10), s.finish()).await.expect("body ends");
        assert_eq!(body, b"all of it");
        assert_eq!(end, want);
        assert_eq!(origin.only_request().sni.as_deref(), Some("localhost"), "SNI is the host name");
    }
}

/// A client that gives up while the upstream is still thinking (no head
/// yet) must not leave the upstream request running.
#[tokio::test]
async fn client_going_away_before_the_head_closes_the_upstream_connection() {
    let (arrived, closed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (a, c) = (Arc::clone(&arrived), Arc::clone(&closed));
    let origin = RawOrigin::scripted(move |_| {
        a.notify_one();
        vec![Step::AwaitClose(Arc::clone(&c))]
    })
    .await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let mut client = tokio::net::TcpStream::connect(vg.addr).await.unwrap();
    let req =
        format!("POST /openai/v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-length: 2\r\n\r\n{{}}", vg.addr);
    tokio::io::AsyncWriteExt::write_all(&mut client, req.as_bytes()).await.unwrap();
    arrived.notified().await; // the request reached the origin; now leave
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), closed.notified())
        .await
        .expect("the origin saw its connection close after the client left");
}

/// A listener whose accept queue is full drops new SYNs, so connecting
/// hangs: veilgate gives up after `connect_timeout_ms` with a 502.
#[tokio::test]
async fn connect_timeout_gives_502() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted).
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let vg = Veilgate::start(&format!(
        "[upstream]\nconnect_timeout_ms = 300\n[presets.openai]\ntargets = [\"http://{addr}\"]\n"
    ))
    .await;
    let started = Instant::now();
    let r = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await;
    let v = r.assert_proxy_error(502);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("timed out"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop((fillers, sock));
}
