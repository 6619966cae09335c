//! The fetch transport and the rules that choose it (spec §4), against
//! loopback origins.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::client::{End, open, send};
use crate::support::hyper_origin::HyperOrigin;
use crate::support::origin::{Captured, RawOrigin, Step, json_response};
use crate::support::tls::TestCa;
use crate::support::{TOKEN, Veilgate, preset_at};

/// A preset that only the fetch transport serves.
fn fetch_preset(name: &str, target: &str) -> String {
    format!("[presets.{name}]\ntargets = [\"{target}\"]\nforce_fetch = true\n")
}

const CHALLENGE_PAGE: &str = "<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title></head>\
    <body><script src=\"/cdn-cgi/challenge-platform/h/b/orchestrate/chl_page/v1?ray=8f\"></script></body></html>";

fn challenge(mitigated_header: bool) -> Vec<u8> {
    let extra = if mitigated_header { "cf-mitigated: challenge\r\n" } else { "" };
    format!(
        "HTTP/1.1 403 Forbidden\r\nserver: cloudflare\r\ncf-ray: 8f0000000000-FRA\r\n{extra}\
         content-type: text/html; charset=UTF-8\r\ncontent-length: {}\r\n\r\n{CHALLENGE_PAGE}",
        CHALLENGE_PAGE.len()
    )
    .into_bytes()
}

fn sorted_headers(c: &Captured) -> Vec<(String, String)> {
    let mut h = c.headers();
    h.sort();
    h
}

#[tokio::test]
async fn fetch_sends_exactly_the_headers_the_socket_sends() {
    let origin = RawOrigin::json("{}").await;
    let target = format!("http://{}", origin.addr);
    let vg =
        Veilgate::start(&format!("{}{}", preset_at("viasocket", origin.addr), fetch_preset("viafetch", &target))).await;
    let headers = [
        ("authorization", "Bearer sk-same"),
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
        ("anthropic-version", "2023-06-01"),
        ("x-goog-upload-protocol", "resumable"),
        ("user-agent", "OpenAI/Python 1.99"),
        ("x-stainless-os", "Linux"),
        ("cookie", "a=b"),
        ("x-forwarded-for", "203.0.113.9"),
        ("accept-encoding", "gzip"),
    ];
    for (path, body) in [("/v1/chat/completions?stream=true", &b"{\"model\":\"m\"}"[..]), ("/v1/models", &b""[..])] {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let a = send(vg.addr, method, &format!("/viasocket{path}"), &headers, body).await;
        let b = send(vg.addr, method, &format!("/viafetch{path}"), &headers, body).await;
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(a.header("x-veilgate-transport"), Some("socket"));
        assert_eq!(b.header("x-veilgate-transport"), Some("fetch"));
        let seen = origin.requests();
        let (socket, fetch) = (&seen[seen.len() - 2], &seen[seen.len() - 1]);
        assert_eq!(socket.request_line(), fetch.request_line());
        assert_eq!(sorted_headers(socket), sorted_headers(fetch), "{method} {path}");
        assert_eq!(socket.body, fetch.body);
    }
    // Each transport kept its own connection.
    let seen = origin.requests();
    assert_ne!(seen[0].connection, seen[1].connection);
}

#[tokio::test]
async fn force_fetch_preset_speaks_http2_and_http1() {
    let ca = TestCa::new();
    for (alpn, want) in [(&[&b"h2"[..], &b"http/1.1"[..]][..], "HTTP/2.0"), (&[&b"http/1.1"[..]][..], "HTTP/1.1")] {
        let origin = HyperOrigin::start(&ca, alpn).await;
        let target = format!("https://localhost:{}", origin.addr.port());
        let vg = Veilgate::start(&format!("{}{}", ca.config(), fetch_preset("h2api", &target))).await;
        for _ in 0..2 {
            let r =
                send(vg.addr, "POST", "/h2api/v1/chat/completions?x=1", &[("authorization", "Bearer k")], b"{}").await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-veilgate-transport"), Some("fetch"));
            assert_eq!(r.json()["version"], want);
        }
        let seen = origin.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].path, "/v1/chat/completions?x=1");
        assert_eq!(seen[0].headers["authorization"], "Bearer k");
        assert_eq!(seen[0].headers["user-agent"], "veilgate");
        assert!(seen[0].headers.get("cookie").is_none());
    }
}

#[tokio::test]
async fn force_fetch_default_sends_everything_through_fetch() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!("force_fetch_default = true\n{}", preset_at("openai", origin.addr))).await;
    let r = send(vg.addr, "GET", "/openai/v1/models", &[], b"").await;
    assert_eq!(r.header("x-veilgate-transport"), Some("fetch"));
}

#[tokio::test]
async fn cloudflare_challenge_moves_the_origin_to_fetch() {
    for mitigated_header in [true, false] {
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        // The first request (the socket's) is challenged; the rest succeed.
        let origin = RawOrigin::start(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                challenge(mitigated_header)
            } else {
                json_response("{\"ok\":true}")
            }
        })
        .await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        let first = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await;
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(first.header("x-veilgate-transport"), Some("fetch"));
        assert_eq!(first.header("x-veilgate-upstream-challenge"), None);
        let second = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await;
        assert_eq!(second.header("x-veilgate-transport"), Some("fetch"), "the next request skips the socket");
        let seen = origin.requests();
        assert_eq!(seen.len(), 3, "socket once, fetch twice");
        assert_ne!(seen[0].connection, seen[1].connection, "the retry came on a new (fetch) connection");
        assert_eq!(seen[1].connection, seen[2].connection, "the second request went straight to fetch");
    }
}

#[tokio::test]
async fn challenge_on_both_transports_reaches_the_client_marked() {
    let origin = RawOrigin::start(|_| challenge(true)).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let r = send(vg.addr, "GET", "/openai/v1/models", &[], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-veilgate-upstream-challenge"), Some("true"));
    assert_eq!(r.header("x-veilgate-transport"), Some("fetch"));
    assert_eq!(r.header("x-proxy-error"), None, "the upstream's own response");
    assert_eq!(r.text(), CHALLENGE_PAGE);
    assert_eq!(origin.requests().len(), 2);
}

#[tokio::test]
async fn genuine_errors_behind_cloudflare_are_not_challenges() {
    let rate_limited = "{\"error\":{\"message\":\"Rate limit\",\"code\":429}}";
    let cases: Vec<Vec<u8>> = vec![
        format!(
            "HTTP/1.1 429 Too Many Requests\r\nserver: cloudflare\r\ncf-ray: 1-FRA\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{rate_limited}",
            rate_limited.len()
        )
        .into_bytes(),
        {
            let page = "<html><body><h1>403 Forbidden</h1><hr><center>cloudflare</center></body></html>";
            format!(
                "HTTP/1.1 403 Forbidden\r\nserver: cloudflare\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                page.len()
            )
            .into_bytes()
        },
    ];
    for reply in cases {
        let expected_status = if reply.starts_with(b"HTTP/1.1 429") { 429 } else { 403 };
        let origin = RawOrigin::start(move |_| reply.clone()).await;
        let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
        for _ in 0..2 {
            let r = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await;
            assert_eq!(r.status, expected_status);
            assert_eq!(r.header("x-veilgate-transport"), Some("socket"));
            assert_eq!(r.header("x-veilgate-upstream-challenge"), None);
            assert!(r.complete && !r.body.is_empty());
        }
        assert_eq!(origin.requests().len(), 2, "one upstream request per client request");
    }
}

#[tokio::test]
async fn aggressive_fallback_off_passes_challenges_through() {
    let origin = RawOrigin::start(|_| challenge(true)).await;
    let vg = Veilgate::start(&format!("aggressive_fallback = false\n{}", preset_at("openai", origin.addr))).await;
    let r = send(vg.addr, "GET", "/openai/v1/models", &[], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-veilgate-transport"), Some("socket"));
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn a_request_the_upstream_took_is_never_replayed() {
    let origin = RawOrigin::scripted(|_| vec![Step::Hang]).await;
    let vg =
        Veilgate::start(&format!("[upstream]\nresponse_timeout_ms = 300\n{}", preset_at("openai", origin.addr))).await;
    let r = send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{\"bill\":\"me once\"}").await;
    let v = r.assert_proxy_error(504);
    assert!(v["error"]["transports"]["fetch"].is_null(), "fetch was not tried: {v}");
    assert_eq!(origin.requests().len(), 1);
    assert_eq!(origin.connection_count(), 1);

    let garbage = RawOrigin::scripted(|_| vec![Step::text("nonsense\r\n\r\n"), Step::Close]).await;
    let vg = Veilgate::start(&preset_at("openai", garbage.addr)).await;
    send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await.assert_proxy_error(502);
    assert_eq!(garbage.requests().len(), 1);
}

/// A stream that lasts longer than every configured timeout, with chunks
/// inside the idle timeout, is never cut — on either transport.
#[tokio::test]
async fn long_streams_outlive_every_timeout() {
    let origin = RawOrigin::scripted(|_| {
        let mut steps = vec![Step::text(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )];
        for i in 0..12 {
            steps.push(Step::Sleep(Duration::from_millis(150)));
            let ev = format!("data: {i}\n\n");
            steps.push(Step::text(&format!("{:x}\r\n{ev}\r\n", ev.len())));
        }
        steps.push(Step::text("0\r\n\r\n"));
        steps
    })
    .await;
    let target = format!("http://{}", origin.addr);
    let vg = Veilgate::start(&format!(
        "[upstream]\nconnect_timeout_ms = 400\nresponse_timeout_ms = 400\nidle_timeout_ms = 400\npool_idle_timeout_ms = 400\n{}{}",
        preset_at("viasocket", origin.addr),
        fetch_preset("viafetch", &target)
    ))
    .await;
    for preset in ["viasocket", "viafetch"] {
        let mut s = open(vg.addr, "GET", &format!("/{preset}/stream"), &[]).await;
        let (body, end) = s.finish().await;
        assert_eq!(end, End::Clean, "{preset}");
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("data: ").count(), 12, "{preset}: {text}");
    }
}

#[tokio::test]
async fn redirects_point_back_through_veilgate() {
    let origin = RawOrigin::start(|req| {
        let loc = match req.target() {
            "/v1/files" => "/v1/files/abc?page=2".to_owned(),
            _ => "https://storage.example.com/bucket/obj?sig=1".to_owned(),
        };
        format!(
            "HTTP/1.1 302 Found\r\nlocation: {loc}\r\nx-goog-upload-url: http://{}/upload/v1beta/files?upload_id=u1\r\ncontent-length: 0\r\n\r\n",
            req.header("host").unwrap_or_default()
        )
        .into_bytes()
    })
    .await;
    let vg =
        Veilgate::start(&format!("[upstream]\nallow_private_targets = true\n{}", preset_at("gemini", origin.addr)))
            .await;
    let r = send(vg.addr, "POST", "/gemini/v1/files", &[], b"{}").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(format!("http://{}/gemini/v1/files/abc?page=2", vg.addr).as_str()));
    assert_eq!(
        r.header("x-goog-upload-url"),
        Some(format!("http://{}/gemini/upload/v1beta/files?upload_id=u1", vg.addr).as_str())
    );
    // Generic mode: any absolute location becomes a generic route (with the path token).
    let r = send(vg.addr, "GET", &format!("/{TOKEN}/http/{}/elsewhere", origin.addr), &[], b"").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}/{TOKEN}/https/storage.example.com/bucket/obj?sig=1", vg.addr).as_str())
    );
    assert_eq!(origin.requests().len(), 2, "redirects are not followed");
}

#[tokio::test]
async fn fetch_refuses_private_targets_too() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start("force_fetch_default = true").await;
    for target in
        [format!("/{TOKEN}/http/{}/x", origin.addr), format!("/{TOKEN}/http/localhost:{}/x", origin.addr.port())]
    {
        let r = send(vg.addr, "GET", &target, &[], b"").await;
        let v = r.assert_proxy_error(403);
        assert!(v["error"]["transports"]["fetch"].is_object(), "{v}");
    }
    assert!(origin.requests().is_empty());
}

fn python_has(module: &str) -> bool {
    crate::sdk::python_has(module)
}

#[tokio::test]
async fn anthropic_python_sdk_through_a_force_fetch_preset() {
    if !python_has("anthropic") {
        return;
    }
    const MESSAGE: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello via fetch"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":4}}"#;
    let origin = RawOrigin::start(|_| json_response(MESSAGE)).await;
    let target = format!("http://{}", origin.addr);
    let vg = Veilgate::start(&fetch_preset("claude", &target)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/anthropic_messages.py");
    let out = tokio::process::Command::new(crate::sdk::python())
        .arg(script)
        .arg(format!("{}/claude", vg.url()))
        .output()
        .await
        .expect("run python3");
    assert!(out.status.success(), "SDK failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello via fetch");
    let seen = origin.only_request();
    assert_eq!(seen.request_line(), "POST /v1/messages HTTP/1.1");
    // The SDK sends its key as x-api-key or as a bearer token, by version.
    let key_sent = seen.header("x-api-key").as_deref() == Some("sk-ant-test-key")
        || seen.header("authorization").as_deref() == Some("Bearer sk-ant-test-key");
    assert!(key_sent, "{}", seen.head);
    assert!(seen.header("anthropic-version").is_some(), "{}", seen.head);
    assert_eq!(seen.header("user-agent").as_deref(), Some("veilgate"));
    let leaked: Vec<String> =
        seen.headers().into_iter().map(|(k, _)| k).filter(|k| k.starts_with("x-stainless")).collect();
    assert!(leaked.is_empty(), "SDK fingerprint reached the origin: {leaked:?}");
}
