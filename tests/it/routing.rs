//! Routing end to end: exact path bytes, local endpoints, and every refusal
//! of §2 answered with JSON before anything reaches an upstream.

use crate::support::client::{send, send_raw};
use crate::support::origin::RawOrigin;
use crate::support::{TOKEN, Veilgate, preset_at};

#[tokio::test]
async fn path_and_query_bytes_arrive_exactly() {
    let origin = RawOrigin::json("{}").await;
    let vg =
        Veilgate::start(&format!("{}[upstream]\nallow_private_targets = true\n", preset_at("openai", origin.addr)))
            .await;
    let o = origin.addr;
    let cases = [
        ("/openai/v1/files/a%2Fb".to_owned(), "/v1/files/a%2Fb"),
        ("/openai/v1/a%20b?q=%20x".to_owned(), "/v1/a%20b?q=%20x"),
        ("/openai/v1/x%0d%0aInjected:%20yes".to_owned(), "/v1/x%0d%0aInjected:%20yes"),
        ("/openai//v1//models/".to_owned(), "//v1//models/"),
        ("/openai/v1/models/".to_owned(), "/v1/models/"),
        ("/openai/v1?".to_owned(), "/v1?"),
        ("/openai?key=abc&x=%2F".to_owned(), "/?key=abc&x=%2F"),
        (format!("/{TOKEN}/http/{o}/a%2Fb//c/?x=%0D%0A"), "/a%2Fb//c/?x=%0D%0A"),
        (format!("//{TOKEN}//HTTP://{o}/trailing/"), "/trailing/"),
        (format!("/{TOKEN}/http/{o}"), "/"),
    ];
    for (sent, want) in &cases {
        let reply = send(vg.addr, "GET", sent, &[], b"").await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.text());
        let got = origin.requests().pop().unwrap();
        assert_eq!(got.target(), *want, "sent {sent}");
    }
    assert_eq!(origin.requests().len(), cases.len());
}

#[tokio::test]
async fn refusals_are_json_and_never_reach_the_upstream() {
    let origin = RawOrigin::json("{}").await;
    let vg =
        Veilgate::start(&format!("{}[upstream]\nallow_private_targets = true\n", preset_at("openai", origin.addr)))
            .await;
    let o = origin.addr;
    let t = TOKEN;
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/{t}"), 400, "token only"),
        (format!("/{t}/"), 400, "token only, trailing slash"),
        (format!("/{t}/ftp/{o}/x"), 400, "unknown scheme"),
        (format!("/{t}/gopher:/{o}/x"), 400, "unknown scheme with colon"),
        (format!("/{t}/https"), 400, "no host"),
        (format!("/{t}/http/user@{o}/x"), 400, "userinfo"),
        (format!("/{t}/http/user:pw@{o}/x"), 400, "userinfo with password"),
        (format!("/{t}/http/127.0.0.1%3a{}/x", o.port()), 400, "percent-encoded host"),
        (format!("/{t}/http/host\\evil/x"), 400, "backslash"),
        (format!("/{t}/http/[fe80::1%25eth0]/x"), 400, "zone id"),
        (format!("/{t}/http/2130706433/x"), 400, "integer IPv4"),
        (format!("/{t}/http/0x7f.0.0.1/x"), 400, "hex IPv4"),
        (format!("/{t}/http/exa_mple.com/x"), 400, "bad DNS name"),
        (format!("/{t}/http/example.com./x"), 400, "trailing dot"),
        (format!("/{t}/http/127.0.0.1:0/x"), 400, "port 0"),
        (format!("/{t}/http/127.0.0.1:65536/x"), 400, "port too large"),
        (format!("/{t}/http/127.0.0.1:/x"), 400, "empty port"),
        ("/wrong_token_0123456789/http/127.0.0.1/x".to_owned(), 401, "wrong token"),
        (format!("/http/{o}/x"), 401, "no token"),
        ("/nonexistent/v1".to_owned(), 404, "unknown preset"),
        ("/wrong_token_0123456789/v1".to_owned(), 401, "token-shaped segment"),
    ];
    for (target, status, what) in &cases {
        let reply = send(vg.addr, "GET", target, &[], b"").await;
        let v = reply.assert_proxy_error(*status);
        assert!(!v.to_string().contains(TOKEN), "{what}: error body must not echo the token");
    }
    // A foreign Host while listening on loopback (DNS rebinding).
    let reply = send(vg.addr, "GET", "/openai/v1/models", &[("host", "attacker.example:8080")], b"").await;
    reply.assert_proxy_error(403);
    // Raw whitespace in the request target never reaches anyone.
    let raw = format!("GET /{t}/http/{o}/a\tb HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    let reply = send_raw(vg.addr, raw.as_bytes(), false).await;
    assert_eq!(reply.status, 400);
    assert!(origin.requests().is_empty(), "no refused request may reach the upstream");
}

#[tokio::test]
async fn preset_auth_requires_the_token() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!("preset_auth = true\n{}", preset_at("openai", origin.addr))).await;
    send(vg.addr, "GET", "/openai/v1/models", &[], b"").await.assert_proxy_error(401);
    assert!(origin.requests().is_empty());
    let ok = send(vg.addr, "GET", &format!("/{TOKEN}/openai/v1/models"), &[], b"").await;
    assert_eq!(ok.status, 200);
    let ok = send(vg.addr, "GET", "/openai/v1/models", &[("x-veilgate-token", TOKEN)], b"").await;
    assert_eq!(ok.status, 200);
    assert_eq!(origin.requests().len(), 2);
    assert!(origin.requests().iter().all(|r| r.target() == "/v1/models"));
}

#[tokio::test]
async fn private_generic_targets_are_refused_by_default() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start("").await;
    let reply = send(vg.addr, "GET", &format!("/{TOKEN}/http/{}/x", origin.addr), &[], b"").await;
    let v = reply.assert_proxy_error(403);
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    let reply = send(vg.addr, "GET", &format!("/{TOKEN}/http/localhost:{}/x", origin.addr.port()), &[], b"").await;
    reply.assert_proxy_error(403);
    assert!(origin.requests().is_empty());
}

#[tokio::test]
async fn local_endpoints() {
    let vg = Veilgate::start("").await;
    let health = send(vg.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(health.json()["version"], env!("CARGO_PKG_VERSION"));
    let page = send(vg.addr, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.text().contains("/openai") && page.text().contains("generativelanguage.googleapis.com"));
    assert!(!page.text().contains(TOKEN), "the page never shows the token");
    send(vg.addr, "GET", "/metrics", &[], b"").await.assert_proxy_error(401);
    let m = send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await;
    assert_eq!(m.status, 200);
    send(vg.addr, "POST", "/healthz", &[], b"").await.assert_proxy_error(405);
}

#[tokio::test]
async fn preflight_is_answered_locally() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!("cors_allow_origins = [\"*\"]\n{}", preset_at("openai", origin.addr))).await;
    let reply = send(
        vg.addr,
        "OPTIONS",
        "/openai/v1/chat/completions",
        &[
            ("origin", "https://chat.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization, content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(reply.header("access-control-allow-headers"), Some("authorization, content-type"));
    assert!(reply.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(origin.requests().is_empty(), "OPTIONS is never forwarded");
}

#[tokio::test]
async fn by_default_only_pages_served_from_this_machine_get_cors() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let addr = vg.addr;
    let preflight = move |from: &'static str| async move {
        let headers = [("origin", from), ("access-control-request-method", "POST")];
        send(addr, "OPTIONS", "/openai/v1/chat/completions", &headers, b"").await
    };
    assert_eq!(preflight("https://evil.example").await.header("access-control-allow-origin"), None);
    assert_eq!(preflight("null").await.header("access-control-allow-origin"), None);
    let local = preflight("http://localhost:3000").await;
    assert_eq!(local.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert_eq!(local.header("vary"), Some("origin"));
    let read = send(vg.addr, "GET", "/openai/x", &[("origin", "https://evil.example")], b"").await;
    assert_eq!(read.header("access-control-allow-origin"), None, "a web page cannot read the answer");
}

#[tokio::test]
async fn cors_origin_list_is_echoed_with_vary() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!(
        "cors_allow_origins = [\"https://chat.example\"]\n{}",
        preset_at("openai", origin.addr)
    ))
    .await;
    let ok = send(vg.addr, "GET", "/openai/x", &[("origin", "https://chat.example")], b"").await;
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://chat.example"));
    assert_eq!(ok.header("vary"), Some("origin"));
    let other = send(vg.addr, "GET", "/openai/x", &[("origin", "https://other.example")], b"").await;
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn dead_upstream_gives_502_with_transport_details() {
    // Nothing listens on this port (held bound for the test).
    let (_port_held, port) = crate::support::refused_addr();
    let port = port.port();
    let vg = Veilgate::start(&format!("[presets.openai]\ntargets = [\"http://127.0.0.1:{port}\"]\n")).await;
    let reply =
        send(vg.addr, "POST", "/openai/v1/chat/completions", &[("authorization", "Bearer sk-secret")], b"{}").await;
    let v = reply.assert_proxy_error(502);
    for transport in ["socket", "fetch"] {
        let t = &v["error"]["transports"][transport];
        let error = t["error"].as_str().unwrap();
        assert!(error.contains("127.0.0.1"), "{transport}: {v}");
        assert!(t["duration_ms"].is_u64(), "{transport}: {v}");
    }
    assert!(!v.to_string().contains("sk-secret"));
}

#[tokio::test]
async fn body_limit_is_enforced_before_the_upstream() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!("[limits]\nmax_body_bytes = 10\n{}", preset_at("openai", origin.addr))).await;
    send(vg.addr, "POST", "/openai/x", &[], &[b'a'; 11]).await.assert_proxy_error(413);
    let ok = send(vg.addr, "POST", "/openai/x", &[], &[b'a'; 10]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(origin.only_request().body, vec![b'a'; 10]);
}

#[tokio::test]
async fn http2_clients_are_served() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let origin = RawOrigin::json("{\"h2\":true}").await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{}/openai/v1/chat/completions?x=1", vg.url()))
        .header("authorization", "Bearer sk-h2")
        .header("x-stainless-os", "Linux")
        .body(Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"h2\":true}");
    let seen = origin.only_request();
    assert_eq!(seen.target(), "/v1/chat/completions?x=1");
    assert_eq!(seen.header("authorization").as_deref(), Some("Bearer sk-h2"));
    assert_eq!(seen.header("x-stainless-os"), None);
    assert_eq!(seen.header("host"), Some(origin.addr.to_string()));
}
