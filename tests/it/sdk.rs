//! Real client SDKs pointed at veilgate (Python; `.ci/run` installs them).

use std::process::Stdio;

use crate::support::origin::{RawOrigin, json_response};
use crate::support::{Veilgate, preset_at};

/// The Python that runs the SDK scripts: `VEILGATE_PYTHON` (`.ci/run`
/// points it at the virtual environment it installs the SDKs into), else
/// `python3` from `PATH`.
pub(crate) fn python() -> std::ffi::OsString {
    std::env::var_os("VEILGATE_PYTHON").unwrap_or_else(|| "python3".into())
}

/// True when [`python`] can import `module`. Locally a missing SDK skips
/// the test with a note; when `VEILGATE_REQUIRE_SDKS` is set (`.ci/run`
/// sets it) or under `CI`, it is a failure.
pub(crate) fn python_has(module: &str) -> bool {
    let ok = std::process::Command::new(python())
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let required = std::env::var_os("VEILGATE_REQUIRE_SDKS").is_some() || std::env::var_os("CI").is_some();
        assert!(!required, "{:?} cannot import {module}; .ci/run must install it", python());
        eprintln!("skipping: {:?} cannot import {module} (pip install {module})", python());
    }
    ok
}

/// Runs `tests/sdk/<script> BASE TOKEN` with [`python`]; its stdout, or a
/// failure with its stderr.
pub(crate) async fn run_script(script: &str, base: String, token: &str) -> String {
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(python()).arg(&script).arg(base).arg(token).output().await.unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the origin"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;

#[tokio::test]
async fn openai_python_sdk_through_an_alias_of_the_unified_endpoint() {
    if !python_has("openai") {
        return;
    }
    let down = RawOrigin::start(|_| {
        b"HTTP/1.1 503 Busy\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_vec()
    })
    .await;
    let up = RawOrigin::start(|_| json_response(COMPLETION)).await;
    let vg = Veilgate::start(&format!(
        "[presets.first]\ntargets = [\"http://{}\"]\n[presets.second]\ntargets = [\"http://{}\"]\n\
         [aliases.fast]\nmodels = [\"first/llama-3.3-70b\", \"second/gpt-4o-mini\"]\n",
        down.addr, up.addr
    ))
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_chat.py");
    let out = tokio::process::Command::new(crate::sdk::python())
        .arg(script)
        .arg(format!("{}/v1", vg.url()))
        .env("VEILGATE_MODEL", "fast")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello from the origin");
    let seen: serde_json::Value = serde_json::from_slice(&up.only_request().body).unwrap();
    assert_eq!(seen["model"], "gpt-4o-mini", "the second member's model");
    assert_eq!(down.requests().len(), 1, "the first member was tried once");
}

#[tokio::test]
async fn openai_python_sdk_through_a_preset() {
    if !python_has("openai") {
        return;
    }
    let origin = RawOrigin::start(|_| json_response(COMPLETION)).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_chat.py");
    let out = tokio::process::Command::new(crate::sdk::python())
        .arg(script)
        .arg(format!("{}/openai/v1", vg.url()))
        .output()
        .await
        .expect("run python3");
    assert!(out.status.success(), "SDK failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello from the origin");

    let seen = origin.only_request();
    assert_eq!(seen.request_line(), "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(seen.header("authorization").as_deref(), Some("Bearer sk-test-sdk-key"));
    assert_eq!(seen.header("user-agent").as_deref(), Some("veilgate"));
    assert_eq!(seen.header("accept-encoding").as_deref(), Some("identity"));
    let leaked: Vec<String> = seen
        .headers()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("x-stainless") || k == "cookie" || k.starts_with("x-forwarded"))
        .collect();
    assert!(leaked.is_empty(), "SDK fingerprint reached the origin: {leaked:?}");
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn openai_python_sdk_as_a_client_with_its_own_token() {
    if !python_has("openai") {
        return;
    }
    const CLIENT_TOKEN: &str = "sdk_client_token_0123456789";
    let origin = RawOrigin::start(|_| json_response(COMPLETION)).await;
    let config = format!(
        "{}[[clients]]\nname = \"sdk\"\ntoken = \"{CLIENT_TOKEN}\"\npresets = [\"openai\"]\n",
        preset_at("openai", origin.addr)
    );
    let vg = Veilgate::start(&config).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_chat.py");
    let run = |token: Option<&'static str>| {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(script).arg(format!("{}/openai/v1", vg.url()));
        if let Some(t) = token {
            cmd.arg(t);
        }
        cmd.output()
    };
    let out = run(Some(CLIENT_TOKEN)).await.expect("run python");
    assert!(out.status.success(), "SDK failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello from the origin");
    let seen = origin.only_request();
    assert_eq!(seen.header("x-veilgate-token"), None, "the client token stays at veilgate");
    assert_eq!(seen.header("authorization").as_deref(), Some("Bearer sk-test-sdk-key"));
    // Without its token the SDK gets veilgate's 401, and nothing reaches the origin.
    let out = run(None).await.expect("run python");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(origin.requests().len(), 1);
}
