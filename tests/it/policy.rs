//! The header policy end to end: what the upstream receives, byte for byte.

use crate::support::client::send;
use crate::support::origin::RawOrigin;
use crate::support::{TOKEN, Veilgate, preset_at};

/// Everything that identifies a client, as SDKs, browsers and proxies send it.
const IDENTIFYING: &[(&str, &str)] = &[
    ("X-Forwarded-For", "203.0.113.7, 198.51.100.1"),
    ("X-Real-IP", "203.0.113.7"),
    ("Forwarded", "for=203.0.113.7;proto=https"),
    ("Via", "1.1 corp-proxy"),
    ("CF-Connecting-IP", "203.0.113.7"),
    ("True-Client-IP", "203.0.113.7"),
    ("Cookie", "session=abc123"),
    ("Referer", "https://me.example/private/page"),
    ("Origin", "https://me.example"),
    ("User-Agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) MyPersonalApp/3.1"),
    ("X-Stainless-OS", "MacOS"),
    ("X-Stainless-Arch", "arm64"),
    ("Sec-CH-UA", "\"Chromium\";v=\"140\""),
    ("Accept-Language", "de-DE,de;q=0.9"),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
    ("TE", "trailers"),
    ("X-Custom-Header", "mine"),
    ("Accept-Encoding", "gzip, br"),
    ("x-veilgate-token", TOKEN),
];

const KEPT: &[(&str, &str)] = &[
    ("Authorization", "Bearer sk-test-123"),
    ("X-Api-Key", "sk-ant-456"),
    ("Content-Type", "application/json"),
    ("Accept", "application/json"),
    ("Anthropic-Version", "2023-06-01"),
];

fn all_headers() -> Vec<(&'static str, &'static str)> {
    let mut h = IDENTIFYING.to_vec();
    h.extend_from_slice(KEPT);
    h
}

/// The exact head the origin must see for the request above.
fn expected_head(target: &str, host: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nhost: {host}\r\naccept: application/json\r\n\
         authorization: Bearer sk-test-123\r\ncontent-type: application/json\r\n\
         x-api-key: sk-ant-456\r\nanthropic-version: 2023-06-01\r\n\
         accept-encoding: identity\r\nuser-agent: veilgate\r\ncontent-length: 11\r\n\r\n"
    )
}

#[tokio::test]
async fn preset_request_carries_only_the_allowlist() {
    let origin = RawOrigin::json("{\"ok\":true}").await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let reply = send(vg.addr, "POST", "/openai/v1/chat/completions", &all_headers(), b"{\"a\":\"b\"}xx").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "{\"ok\":true}");
    assert_eq!(reply.header("x-veilgate-transport"), Some("socket"));
    let seen = origin.only_request();
    assert_eq!(seen.head, expected_head("/v1/chat/completions", &origin.addr.to_string()));
    assert_eq!(seen.body, b"{\"a\":\"b\"}xx");
}

#[tokio::test]
async fn generic_request_carries_only_the_allowlist() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start("[upstream]\nallow_private_targets = true").await;
    let target = format!("/{TOKEN}/http:/127.0.0.1:{}/v1/messages?beta=true", origin.addr.port());
    let reply = send(vg.addr, "POST", &target, &all_headers(), b"{\"a\":\"b\"}xx").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.only_request();
    assert_eq!(seen.head, expected_head("/v1/messages?beta=true", &origin.addr.to_string()));
}

#[tokio::test]
async fn token_header_authenticates_and_is_never_forwarded() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start("[upstream]\nallow_private_targets = true").await;
    let target = format!("/http/{}/x", origin.addr);
    let reply = send(vg.addr, "GET", &target, &[("x-veilgate-token", TOKEN)], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.only_request();
    assert_eq!(
        seen.head,
        format!(
            "GET /x HTTP/1.1\r\nhost: {}\r\naccept: */*\r\naccept-encoding: identity\r\nuser-agent: veilgate\r\n\r\n",
            origin.addr
        )
    );
    assert!(!seen.head.contains(TOKEN));
}

#[tokio::test]
async fn user_agent_settings() {
    let origin = RawOrigin::json("{}").await;
    let config = format!(
        "[headers]\nuser_agent = \"pass\"\nallow = [\"X-Custom-Header\"]\n{}\n{}user_agent = \"strip\"\n",
        preset_at("openai", origin.addr),
        preset_at("claude", origin.addr)
    );
    let vg = Veilgate::start(&config).await;
    send(vg.addr, "GET", "/openai/a", &[("user-agent", "curl/8.5"), ("x-custom-header", "1")], b"").await;
    send(vg.addr, "GET", "/claude/b", &[("user-agent", "curl/8.5")], b"").await;
    let seen = origin.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("user-agent").as_deref(), Some("curl/8.5"));
    assert_eq!(seen[0].header("x-custom-header").as_deref(), Some("1"), "operator allowed it");
    assert_eq!(seen[1].header("user-agent"), None, "the preset strips it");
}

#[tokio::test]
async fn response_headers_are_filtered() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nset-cookie: track=1\r\n\
          alt-svc: h3=\":443\"\r\naccess-control-allow-origin: https://evil.example\r\n\
          keep-alive: timeout=5\r\nx-request-id: r1\r\n\r\nok"
            .to_vec()
    })
    .await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let reply = send(vg.addr, "GET", "/openai/x", &[("origin", "https://app.example")], b"").await;
    assert_eq!(reply.text(), "ok");
    assert_eq!(reply.header("set-cookie"), None);
    assert_eq!(reply.header("alt-svc"), None);
    assert_eq!(reply.header("keep-alive"), None);
    assert_eq!(reply.header("access-control-allow-origin"), None, "neither the upstream's nor one for a web page");
    assert_eq!(reply.header("x-request-id"), Some("r1"));
    assert_eq!(reply.header("x-veilgate-transport"), Some("socket"));
}
