//! Provider keys held by veilgate (SPEC §12): loopback origins that accept
//! some keys and refuse or rate-limit others, clients that show only their
//! own token (in the SDK's API-key slot), the vault, and every place a key
//! must never be shown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::client::send;
use crate::support::origin::{Captured, RawOrigin, json_response};
use crate::support::{TOKEN, Veilgate, binary, preset_at};

const CLIENT: &str = "team_client_token_0123456789";
const KEY_A: &str = "sk-held-key-AAAA-0001";
const KEY_B: &str = "sk-held-key-BBBB-0002";
const KEY_C: &str = "sk-held-key-CCCC-0003";

/// A preset `openai` at `origin` holding `keys`, a client, and `extra`.
fn keyed(origin: std::net::SocketAddr, keys: &[&str], extra: &str) -> String {
    let list: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        "{}keys = [{}]\nkey_probe_interval_s = 1\n{}[upstream]\nallow_private_targets = true\n\
         [[clients]]\nname = \"team\"\ntoken = \"{CLIENT}\"\ngeneric = true\n{extra}",
        preset_at("openai", origin),
        list.join(", "),
        preset_at("plain", origin),
    )
}

/// The held key an origin saw (`authorization: Bearer …`).
fn key_seen(c: &Captured) -> Option<String> {
    c.header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
}

fn status_line(code: u16, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn held_keys_replace_the_clients_and_go_to_their_preset_only() {
    let origin = RawOrigin::json("{\"ok\":true}").await;
    let vg = Veilgate::start(&keyed(origin.addr, &[KEY_A, KEY_B], "")).await;
    let chat = "/openai/v1/chat/completions?key=client-own-key&alt=sse";
    let own_keys = [
        ("authorization", format!("Bearer {CLIENT}")),
        ("x-api-key", "sk-ant-client-own".to_owned()),
        ("x-goog-api-key", "AIza-client-own".to_owned()),
    ];
    let own: Vec<(&str, &str)> = own_keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..3 {
        let reply = send(vg.addr, "POST", chat, &own, b"{}").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The token in x-veilgate-token wins over an SDK's own key.
    let reply = send(
        vg.addr,
        "GET",
        "/openai/v1/models",
        &[("x-veilgate-token", CLIENT), ("authorization", "Bearer sk-real-provider-key")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = origin.requests();
    let keys: Vec<Option<String>> = seen.iter().map(key_seen).collect();
    let (a, b) = (Some(KEY_A.to_owned()), Some(KEY_B.to_owned()));
    assert_eq!(keys, [a.clone(), b.clone(), a, b], "round-robin over the held keys");
    for c in &seen[..3] {
        assert_eq!(c.target(), "/v1/chat/completions?alt=sse", "the client's key= is removed, the rest kept");
        assert_eq!((c.header("x-api-key"), c.header("x-goog-api-key")), (None, None), "{}", c.head);
        assert!(!c.head.contains(CLIENT) && !c.head.contains("client-own"), "{}", c.head);
    }

    // An unkeyed preset forwards the client's own key; a generic route to
    // the same origin never gets a held one.
    let before = origin.requests().len();
    let reply = send(
        vg.addr,
        "GET",
        "/plain/v1/models",
        &[("x-veilgate-token", CLIENT), ("authorization", "Bearer sk-mine")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let generic = format!("/{CLIENT}/http/{}/v1/models", origin.addr);
    assert_eq!(send(vg.addr, "GET", &generic, &[], b"").await.status, 200);
    let seen = origin.requests();
    assert_eq!(key_seen(&seen[before]).as_deref(), Some("sk-mine"));
    assert_eq!(seen[before + 1].header("authorization"), None);

    // A keyed preset needs a caller: no token, or a key slot that holds
    // no token of veilgate's → 401, nothing sent.
    let before = origin.requests().len();
    for headers in [vec![], vec![("authorization", "Bearer sk-some-provider-key")], vec![("x-api-key", "nope")]] {
        let reply = send(vg.addr, "POST", "/openai/v1/chat/completions", &headers, b"{}").await;
        reply.assert_proxy_error(401);
    }
    let reply = send(vg.addr, "GET", "/openai/v1/models?key=not-a-token", &[], b"").await;
    reply.assert_proxy_error(401);
    // The token in the key= parameter or in x-api-key is the caller's too.
    for (target, headers) in [
        (format!("/openai/v1/models?key={CLIENT}"), vec![]),
        ("/openai/v1/models".to_owned(), vec![("x-api-key", CLIENT)]),
        ("/openai/v1/models".to_owned(), vec![("x-goog-api-key", CLIENT)]),
    ] {
        assert_eq!(send(vg.addr, "GET", &target, &headers, b"").await.status, 200, "{target} {headers:?}");
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), before + 3, "refused requests never reached the origin");
    assert!(seen[before..].iter().all(|c| !c.head.contains(CLIENT)), "a key-slot token is never forwarded");
}

#[tokio::test]
async fn a_refused_key_is_disabled_retried_with_the_next_and_probed_back() {
    let refuse_a = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&refuse_a);
    let origin = RawOrigin::start(move |c| match key_seen(c).as_deref() {
        Some(KEY_A) if flag.load(Ordering::SeqCst) => status_line(401, "", r#"{"error":{"message":"bad key"}}"#),
        Some(k) => json_response(&format!("{{\"served_by\":\"{k}\"}}")),
        None => status_line(401, "", "{}"),
    })
    .await;
    let vg = Veilgate::start(&keyed(origin.addr, &[KEY_A, KEY_B], "")).await;
    let auth = format!("Bearer {CLIENT}");
    let chat = |vg: &Veilgate| {
        let auth = auth.clone();
        let addr = vg.addr;
        async move { send(addr, "POST", "/openai/v1/chat/completions", &[("authorization", &auth)], b"{\"n\":1}").await }
    };
    // Key A is refused: the client never sees that 401, key B answers.
    let reply = chat(&vg).await;
    assert_eq!((reply.status, reply.json()["served_by"].as_str()), (200, Some(KEY_B)), "{}", reply.text());
    let seen = origin.requests();
    assert_eq!(seen.iter().map(key_seen).collect::<Vec<_>>(), [Some(KEY_A.into()), Some(KEY_B.into())]);
    assert_eq!(seen[0].body, seen[1].body, "the same request went again");
    for _ in 0..3 {
        assert_eq!(chat(&vg).await.json()["served_by"].as_str(), Some(KEY_B), "a disabled key is not picked");
    }
    let metrics = send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await.text();
    assert!(metrics.contains("veilgate_key_state{preset=\"openai\",key=\"0\",state=\"disabled\"} 1"), "{metrics}");

    // The provider takes key A again: a probe finds out, and A is used.
    refuse_a.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics =
            send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await.text();
        if metrics.contains("veilgate_key_state{preset=\"openai\",key=\"0\",state=\"usable\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "key A never came back: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = origin.requests().into_iter().find(|c| c.request_line() == "GET /v1/models HTTP/1.1");
    assert_eq!(probe.as_ref().and_then(key_seen).as_deref(), Some(KEY_A), "the probe carries the disabled key");
    let served: Vec<String> =
        [chat(&vg).await, chat(&vg).await].iter().map(|r| r.json()["served_by"].as_str().unwrap().to_owned()).collect();
    assert!(served.contains(&KEY_A.to_owned()) && served.contains(&KEY_B.to_owned()), "{served:?}");
}

#[tokio::test]
async fn rate_limited_keys_cool_until_their_reset_and_none_left_is_429() {
    // Each key answers 429 with another form of its reset.
    let soon = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(120)).to_string();
    let origin = RawOrigin::start(move |c| match key_seen(c).as_deref() {
        Some(KEY_A) => status_line(429, "retry-after: 30\r\n", r#"{"error":"slow down A"}"#),
        Some(KEY_B) => status_line(429, "x-ratelimit-reset-requests: 6m0s\r\n", r#"{"error":"slow down B"}"#),
        Some(KEY_C) => {
            status_line(429, &format!("anthropic-ratelimit-requests-reset: {soon}\r\n"), r#"{"error":"slow down C"}"#)
        }
        _ => status_line(401, "", "{}"),
    })
    .await;
    let vg = Veilgate::start(&keyed(origin.addr, &[KEY_A, KEY_B, KEY_C], "")).await;
    let auth = format!("Bearer {CLIENT}");
    // Every key tried once; the last answer reaches the client as it came.
    let reply = send(vg.addr, "POST", "/openai/v1/chat/completions", &[("authorization", &auth)], b"{}").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("x-proxy-error"), None, "the provider's own answer");
    assert_eq!(reply.text(), r#"{"error":"slow down C"}"#);
    assert_eq!(origin.requests().len(), 3);

    // Now none is usable: veilgate's 429 with the soonest end (key A's
    // 30 s), and nothing reaches the origin.
    let reply = send(vg.addr, "POST", "/openai/v1/chat/completions", &[("authorization", &auth)], b"{}").await;
    let body = reply.assert_proxy_error(429);
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    assert!(body["error"]["message"].as_str().unwrap().contains("openai"), "{body}");
    assert_eq!(origin.requests().len(), 3);

    // The dashboard shows each key's cooling end: 30 s, 6 min and 2 min.
    let page = send(vg.addr, "GET", "/", &[], b"").await.text();
    let start = page.find("id=\"preset-data\">").unwrap() + "id=\"preset-data\">".len();
    let data: serde_json::Value =
        serde_json::from_str(&page[start..start + page[start..].find("</script>").unwrap()]).unwrap();
    let openai = data.as_array().unwrap().iter().find(|p| p["route"] == "openai").unwrap();
    let left: Vec<u64> = openai["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["state"], "cooling");
            let until = humantime::parse_rfc3339(k["until"].as_str().unwrap()).unwrap();
            until.duration_since(std::time::SystemTime::now()).unwrap_or_default().as_secs()
        })
        .collect();
    assert!(
        (28..=30).contains(&left[0]) && (357..=360).contains(&left[1]) && (117..=120).contains(&left[2]),
        "{left:?}"
    );
    for k in openai["keys"].as_array().unwrap() {
        assert!(k["key"].as_str().unwrap().contains('…'), "masked: {k}");
    }
    assert!(!page.contains("held-key"), "no key on the dashboard");
}

#[tokio::test]
async fn every_key_disabled_is_503_and_nothing_is_sent() {
    let origin = RawOrigin::start(|_| status_line(403, "", r#"{"error":"forbidden"}"#)).await;
    let vg = Veilgate::start(&keyed(origin.addr, &[KEY_A, KEY_B], "")).await;
    let auth = format!("Bearer {CLIENT}");
    let reply = send(vg.addr, "GET", "/openai/v1/models", &[("authorization", &auth)], b"").await;
    assert_eq!((reply.status, reply.header("x-proxy-error")), (403, None), "the last answer as it came");
    let sent = origin.requests().len();
    assert_eq!(sent, 2, "each key once");
    let reply = send(vg.addr, "GET", "/openai/v1/models", &[("authorization", &auth)], b"").await;
    reply.assert_proxy_error(503);
    assert!(origin.requests().iter().skip(sent).all(|c| c.request_line().starts_with("GET /v1/models")), "probes only");
}

/// The vault JSON of one provider `openai` at `origin` with `key`.
fn vault_json(origin: std::net::SocketAddr, key: &str) -> String {
    format!(
        r#"{{"version":1,"providers":{{"openai":{{"protocol":"openai","endpoint":"http://{origin}/v1",
        "keys":[{{"key":"{key}","owner":"a@b.c","type":"free"}},{{"key":"sk-expired-key-0000","type":"expired"}}],
        "models":[{{"id":"gpt-4o-mini","usage":"chat","contextWindow":128000,"maxOutputTokens":16384}}]}}}}}}"#
    )
}

/// Encrypts `plain` with the `openssl` CLI; `None` when it is not
/// installed (locally; `.ci/run` installs it).
fn openssl_encrypt(plain: &str, passphrase: &str, out: &std::path::Path) -> Option<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["enc", "-aes-256-cbc", "-a", "-pbkdf2", "-iter", "100000", "-salt", "-pass"])
        .arg(format!("pass:{passphrase}"))
        .arg("-out")
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(plain.as_bytes()).ok()?;
    child.wait().ok()?.success().then_some(())
}

#[tokio::test]
async fn a_vault_made_by_openssl_holds_the_keys() {
    let origin = RawOrigin::json("{\"ok\":true}").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ai.json.enc");
    if openssl_encrypt(&vault_json(origin.addr, "sk-from-the-vault-0042"), "vault pass 1", &file).is_none() {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("VEILGATE_REQUIRE_SDKS").is_some();
        assert!(!required, "openssl is needed; .ci/run installs it");
        eprintln!("skipping: no openssl CLI");
        return;
    }
    let config = |passphrase: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\n[upstream]\nallow_private_targets = true\n\
             [vault]\nfile = \"{}\"\npassphrase = \"{passphrase}\"\n\
             [[clients]]\nname = \"team\"\ntoken = \"{CLIENT}\"\n",
            file.display()
        )
    };
    let running = binary::start(&config("env:VAULT_PASS"), &[("VAULT_PASS", "vault pass 1")]).await;
    let vg = Veilgate::at(running.addr);
    let reply = send(vg.addr, "GET", "/openai/v1/chat", &[("authorization", &format!("Bearer {CLIENT}"))], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(key_seen(&origin.only_request()).as_deref(), Some("sk-from-the-vault-0042"));
    // The vault's models answer /v1/models at veilgate.
    let models =
        send(vg.addr, "GET", "/openai/v1/models", &[("authorization", &format!("Bearer {CLIENT}"))], b"").await;
    assert_eq!(models.json()["data"][0]["id"], "gpt-4o-mini", "{}", models.text());
    assert_eq!(models.json()["data"][0]["context_window"], 128000);
    assert_eq!(origin.requests().len(), 1, "answered by veilgate");
    drop(running);

    // Our own encryptor writes what openssl reads back.
    let ours = dir.path().join("ours.enc");
    std::fs::write(&ours, veilgate::keys::vault::encrypt(b"{\"providers\":{}}", b"p", *b"saltsalt")).unwrap();
    let back = std::process::Command::new("openssl")
        .args(["enc", "-d", "-aes-256-cbc", "-a", "-pbkdf2", "-iter", "100000", "-pass", "pass:p", "-in"])
        .arg(&ours)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&back.stdout),
        "{\"providers\":{}}",
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );

    // A wrong passphrase is a start-up error that names the file, never a key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veilgate"))
        .arg("check-config")
        .arg("--config")
        .arg({
            let path = dir.path().join("wrong.toml");
            std::fs::write(&path, config("not the passphrase")).unwrap();
            path
        })
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()) && stderr.contains("passphrase"), "{stderr}");
    assert!(!stderr.contains("sk-from") && !stderr.contains("not the passphrase"), "{stderr}");
}

#[tokio::test]
async fn held_keys_are_never_shown() {
    const ENV_KEY: &str = "sk-held-from-env-7777";
    let origin = RawOrigin::start(|c| match key_seen(c).as_deref() {
        Some(KEY_A) => status_line(401, "", r#"{"error":"refused"}"#),
        Some(ENV_KEY) => status_line(429, "retry-after: 1\r\n", r#"{"error":"slow"}"#),
        _ => status_line(500, "", r#"{"error":"x"}"#),
    })
    .await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\n{}",
        keyed(origin.addr, &[KEY_A, "env:HELD_KEY"], "")
    );
    let running = binary::start(&config, &[("RUST_LOG", "trace"), ("HELD_KEY", ENV_KEY), ("DEBUG_MODE", "true")]).await;
    let (mut child, addr, mut lines, mut log) = (running.child, running.addr, running.lines, running.log);
    let auth = format!("Bearer {CLIENT}");
    let admin = format!("Bearer {TOKEN}");
    let mut shown = Vec::new();
    // Refused, rate-limited, none left, a generic route, a tunnel.
    for _ in 0..2 {
        shown.push(send(addr, "POST", "/openai/v1/chat/completions", &[("authorization", &auth)], b"{}").await.text());
    }
    let generic = format!("/{CLIENT}/http/{}/v1", origin.addr);
    shown.push(send(addr, "GET", &generic, &[], b"").await.text());
    let tunnel = [
        ("authorization", auth.as_str()),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    shown.push(send(addr, "GET", "/openai/v1/realtime", &tunnel, b"").await.text());
    shown.push(send(addr, "GET", "/metrics", &[("authorization", &admin)], b"").await.text());
    shown.push(send(addr, "GET", "/", &[], b"").await.text());
    shown.push(send(addr, "GET", "/v1/providers", &[("authorization", &auth)], b"").await.text());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veilgate.toml");
    std::fs::write(&path, &config).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_veilgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env("HELD_KEY", ENV_KEY)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let warning = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(warning.contains("presets.openai.keys[0]"), "a literal key is warned about: {warning}");
    shown.push(String::from_utf8_lossy(&check.stdout).into_owned());
    shown.push(warning);
    child.kill().await.unwrap();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(log.contains("provider key"), "the benching was logged: {log}");
    shown.push(log);
    for text in &shown {
        for key in [KEY_A, ENV_KEY] {
            assert!(!text.contains(key), "{key} shown in:\n{text}");
        }
    }
    // Only the preset's own target ever saw a held key.
    for c in origin.requests() {
        let key = key_seen(&c);
        if c.target().starts_with("/v1/chat") || c.target().starts_with("/v1/models") {
            assert!(key.as_deref() == Some(KEY_A) || key.as_deref() == Some(ENV_KEY), "{}", c.head);
        } else {
            assert!(!c.head.contains(KEY_A) && !c.head.contains(ENV_KEY), "a held key left its preset: {}", c.head);
        }
    }
}

#[tokio::test]
async fn providers_models_and_legacy_host_routing() {
    let origin = RawOrigin::json("{\"proxied\":true}").await;
    let config = format!(
        "{}keys = [\"{KEY_A}\"]\n\
         models = [{{ id = \"gpt-4o-mini\", contextWindow = 128000, maxOutputTokens = 16384 }}, {{ id = \"org/model-x\" }}]\n\
         {}keys = [\"sk-ant-held-0123456789\"]\n{}[upstream]\nallow_private_targets = true\n\
         [[clients]]\nname = \"team\"\ntoken = \"{CLIENT}\"\n\
         [[clients]]\nname = \"solo\"\ntoken = \"solo_client_token_0123456789\"\npresets = [\"plain\"]\n",
        preset_at("openai", origin.addr),
        preset_at("claude", origin.addr),
        preset_at("plain", origin.addr),
    );
    let vg = Veilgate::start(&config).await;
    let auth = format!("Bearer {CLIENT}");
    let get = |target: &str, headers: Vec<(&'static str, String)>| {
        let (addr, target) = (vg.addr, target.to_owned());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(addr, "GET", &target, &h, b"").await
        }
    };
    let providers = get("/v1/providers", vec![("authorization", auth.clone())]).await.json();
    let ids: Vec<&str> = providers["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["openai", "claude"], "{providers}");
    assert_eq!(providers["data"][1]["protocol"], "anthropic");
    assert_eq!(get(&format!("/{CLIENT}/v1/providers"), vec![]).await.status, 200, "the token in the path");
    get("/v1/providers", vec![]).await.assert_proxy_error(401);
    let solo = get("/v1/providers", vec![("authorization", "Bearer solo_client_token_0123456789".into())]).await;
    assert_eq!(solo.json()["data"], serde_json::json!([]), "only the keyed presets it may use");

    let list = get("/openai/v1/models", vec![("authorization", auth.clone())]).await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["max_completion_tokens"], 16384);
    assert_eq!(list["data"][0]["owned_by"], "openai");
    let one = get("/openai/v1/models/org%2Fmodel-x", vec![("authorization", auth.clone())]).await.json();
    assert_eq!(one["id"], "org/model-x");
    get("/openai/v1/models/nope", vec![("authorization", auth.clone())]).await.assert_proxy_error(404);
    assert!(origin.requests().is_empty(), "declared models are answered by veilgate");

    // x-host-final: `/v1/…` to the preset whose target is that host.
    let host = origin.addr.to_string();
    let reply =
        get("/v1/chat/completions", vec![("x-host-final", host.clone()), ("authorization", auth.clone())]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.only_request();
    assert_eq!(seen.target(), "/v1/chat/completions");
    assert_eq!(seen.header("x-host-final"), None, "never forwarded");
    assert!(key_seen(&seen).is_some());
}

#[tokio::test]
async fn the_sdks_need_only_a_client_token_as_their_api_key() {
    use crate::sdk::python_has;
    if !python_has("openai") || !python_has("anthropic") || !python_has("google.genai") {
        return;
    }
    let origin = crate::usage::three_providers().await;
    let vg = Veilgate::start(&format!(
        "{}keys = [\"sk-openai-held-0001\"]\n{}keys = [\"sk-ant-held-0002\"]\n{}keys = [\"AIza-held-0003\"]\n\
         [[clients]]\nname = \"sdk\"\ntoken = \"{CLIENT}\"\n",
        preset_at("openai", origin.addr),
        preset_at("claude", origin.addr),
        preset_at("gemini", origin.addr),
    ))
    .await;
    let token = format!("key:{CLIENT}");
    let run = |script: &'static str, base: String| crate::sdk::run_script(script, base, &token);
    assert_eq!(run("openai_stream.py", format!("{}/openai/v1", vg.url())).await, "Hello from OpenAI\n0\n");
    assert_eq!(run("anthropic_messages.py", format!("{}/claude", vg.url())).await.trim(), "Hello from Claude");
    assert_eq!(run("genai_stream.py", format!("{}/gemini", vg.url())).await.trim(), "Hello from Gemini");
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].header("authorization").as_deref(), Some("Bearer sk-openai-held-0001"));
    assert_eq!(seen[1].header("x-api-key").as_deref(), Some("sk-ant-held-0002"));
    assert_eq!(seen[2].header("x-goog-api-key").as_deref(), Some("AIza-held-0003"));
    for c in &seen {
        assert!(!c.head.contains(CLIENT) && !c.target().contains("key="), "{}", c.head);
    }
}
