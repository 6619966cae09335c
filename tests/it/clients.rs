//! Clients of SPEC §9: their own tokens, what each may use, and the access
//! log that names them but never shows a token.

use std::time::Duration;

use crate::support::binary;
use crate::support::client::send;
use crate::support::origin::RawOrigin;
use crate::support::{TOKEN, Veilgate, preset_at};

const ALICE: &str = "alice_token_0123456789abcdef";
const BOB: &str = "bob_token_0123456789abcdefgh";

fn sha256_hex(token: &str) -> String {
    veilgate::client::to_hex(&veilgate::client::sha256(token.as_bytes()))
}

/// Alice may use `openai` only; Bob every preset and generic routes.
fn clients_config(origin: std::net::SocketAddr) -> String {
    format!(
        "{}{}[upstream]\nallow_private_targets = true\n\
         [[clients]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\npresets = [\"openai\"]\n\
         [[clients]]\nname = \"bob\"\ntoken = \"{BOB}\"\ngeneric = true\n",
        preset_at("openai", origin),
        preset_at("gemini", origin),
        sha256_hex(ALICE)
    )
}

#[tokio::test]
async fn clients_use_what_they_may_and_nothing_else() {
    let origin = RawOrigin::json("{\"ok\":true}").await;
    let vg = Veilgate::start(&clients_config(origin.addr)).await;
    let generic = |token: &str| format!("/{token}/http/{}/v1/x", origin.addr);

    // (target, x-veilgate-token) → status
    let cases: Vec<(String, Option<&str>, u16)> = vec![
        (format!("/{ALICE}/openai/v1/models"), None, 200),
        ("/openai/v1/models".into(), Some(ALICE), 200),
        (format!("/{ALICE}/gemini/v1beta/models"), None, 403),
        (generic(ALICE), None, 403),
        (format!("/{BOB}/gemini/v1beta/models"), None, 200),
        (generic(BOB), None, 200),
        (generic(TOKEN), None, 200),
        // No token while clients exist: presets need one.
        ("/openai/v1/models".into(), None, 401),
        // A token that is nobody's: 401 whatever the route.
        ("/openai/v1/models".into(), Some("carol_token_0123456789abcd"), 401),
        ("/carol_token_0123456789abcd/openai/v1/models".into(), None, 401),
    ];
    for (target, header, status) in &cases {
        let headers: Vec<(&str, &str)> = header.iter().map(|t| ("x-veilgate-token", *t)).collect();
        let reply = send(vg.addr, "GET", target, &headers, b"").await;
        assert_eq!(reply.status, *status, "{target} {header:?}: {}", reply.text());
        if *status != 200 {
            reply.assert_proxy_error(*status);
        }
    }
    for seen in origin.requests() {
        let raw = format!("{}{}", seen.head, String::from_utf8_lossy(&seen.body));
        for token in [ALICE, BOB, TOKEN] {
            assert!(!raw.contains(token), "a token reached the origin: {raw}");
        }
    }
    assert_eq!(origin.requests().len(), 5, "only the allowed requests reached the origin");
    // /metrics is the admin's.
    let m = send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {ALICE}"))], b"").await;
    m.assert_proxy_error(401);
}

#[tokio::test]
async fn a_wrong_token_in_the_header_is_401_even_without_clients() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let wrong = send(vg.addr, "GET", "/openai/v1", &[("x-veilgate-token", "wrong_token_0123456789")], b"").await;
    wrong.assert_proxy_error(401);
    assert_eq!(send(vg.addr, "GET", "/openai/v1", &[], b"").await.status, 200, "no token: anonymous");
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn the_access_log_names_the_client_and_never_its_token() {
    let origin = RawOrigin::json("{}").await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\n[[clients]]\nname = \"alice\"\ntoken = \"env:ALICE_TOKEN\"\n{}",
        preset_at("openai", origin.addr)
    );
    let running = binary::start(&config, &[("ALICE_TOKEN", ALICE), ("RUST_LOG", "info")]).await;
    let (mut child, addr, mut lines) = (running.child, running.addr, running.lines);
    assert_eq!(send(addr, "GET", &format!("/{ALICE}/openai/v1"), &[], b"").await.status, 200);
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.contains("request") && line.contains("preset") {
                return line;
            }
        }
    })
    .await
    .expect("an access line");
    child.kill().await.unwrap();
    assert!(line.contains("client=\"alice\""), "{line}");
    assert!(!line.contains(ALICE), "the token is in the log: {line}");
}

#[tokio::test]
async fn veilgate_token_prints_a_token_and_its_hash() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_veilgate")).arg("token").output().await.unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().find_map(|l| l.strip_prefix("token: ")).expect("token line").trim().to_owned();
    let hash = text.lines().find_map(|l| l.strip_prefix("token_sha256 = ")).expect("hash line").trim_matches('"');
    assert_eq!(token.len(), 43);
    assert_eq!(hash, sha256_hex(&token));
    // The line drops straight into a [[clients]] entry.
    let toml = format!("auth_token = \"{TOKEN}\"\n[[clients]]\nname = \"new\"\ntoken_sha256 = \"{hash}\"\n");
    let raw = veilgate::config::RawConfig::from_toml(&toml).unwrap();
    let config = veilgate::config::Config::from_raw(raw, &|_| None).unwrap();
    assert_eq!(&*config.clients.find(token.as_bytes()).unwrap().name, "new");
}

#[tokio::test]
async fn client_entries_are_checked_at_start() {
    let bad = [
        ("[[clients]]\nname = \"Alice\"\ntoken = \"t_0123456789abcdef\"", "clients"),
        ("[[clients]]\nname = \"a\"", "exactly one of token_sha256 and token"),
        ("[[clients]]\nname = \"a\"\ntoken_sha256 = \"abc\"", "token_sha256"),
        ("[[clients]]\nname = \"a\"\ntoken = \"env:NOT_SET_ANYWHERE\"", "NOT_SET_ANYWHERE"),
        ("[[clients]]\nname = \"a\"\ntoken = \"file:/nonexistent/token\"", "/nonexistent/token"),
        ("[[clients]]\nname = \"a\"\ntoken = \"x_0123456789abcdef\"\npresets = [\"nope\"]", "nope"),
        (
            "[[clients]]\nname = \"a\"\ntoken = \"x_0123456789abcdef\"\n[[clients]]\nname = \"a\"\ntoken = \"y_0123456789abcdef\"",
            "twice",
        ),
        (
            "[[clients]]\nname = \"a\"\ntoken = \"x_0123456789abcdef\"\n[clients.limits]\nmonthly_dollars = 1",
            "monthly_dollars",
        ),
    ];
    for (toml, named) in bad {
        let error = veilgate::config::RawConfig::from_toml(toml)
            .and_then(|raw| veilgate::config::Config::from_raw(raw, &|_| None))
            .err()
            .unwrap_or_else(|| panic!("accepted: {toml}"));
        assert!(error.to_string().contains(named), "{toml}: {error}");
        assert!(!error.to_string().contains("0123456789abcdef"), "a secret in the error: {error}");
    }
}

/// An HS256 JWT as the seed aiproxy signs them.
pub fn jwt(secret: &[u8], header: &str, claims: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("{signed}.{}", b64.encode(ring::hmac::sign(&key, signed.as_bytes())))
}

#[tokio::test]
async fn signed_tokens_name_their_client_and_bad_ones_are_401() {
    let origin = RawOrigin::json("{}").await;
    let secret = b"aiproxy-secret-for-tests";
    // Removed with the test (the directory lives until the end).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, secret).unwrap();
    let config =
        format!("{}[auth]\njwt_hs256_secret = \"file:{}\"\n", preset_at("openai", origin.addr), path.display());
    let vg = Veilgate::start(&config).await;
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let good = jwt(secret, hs, r#"{"email":"alice@team.example","exp":4102444800}"#);
    let expired = jwt(secret, hs, r#"{"email":"alice@team.example","exp":1000}"#);
    let forged = jwt(b"another secret", hs, r#"{"email":"alice@team.example"}"#);
    let none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.", b64.encode(r#"{"alg":"none"}"#), b64.encode(r#"{"email":"alice@team.example"}"#))
    };
    assert_eq!(send(vg.addr, "GET", &format!("/{good}/openai/v1"), &[], b"").await.status, 200, "in the path");
    assert_eq!(send(vg.addr, "GET", "/openai/v1", &[("x-veilgate-token", &good)], b"").await.status, 200);
    for bad in [&expired, &forged, &none, &"e30.e30.e30".to_owned()] {
        let r = send(vg.addr, "GET", "/openai/v1", &[("x-veilgate-token", bad)], b"").await;
        r.assert_proxy_error(401);
        let r = send(vg.addr, "GET", &format!("/{bad}/openai/v1"), &[], b"").await;
        assert_eq!(r.status, 401, "{bad} in the path");
    }
    // A JWT client has no generic routes.
    let generic = send(vg.addr, "GET", &format!("/{good}/http/{}/x", origin.addr), &[], b"").await;
    generic.assert_proxy_error(403);
    assert_eq!(origin.requests().len(), 2);
}
