//! The binary as a user runs it: `check-config`, start-up refusals, and the
//! generated token (stored 0600, never printed when stderr is not a terminal).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_veilgate");

fn veilgate(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn check_config_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[upstream]\nconect_timeout_ms = 10\n", "conect_timeout_ms"),
        ("[headers]\nallow = [\"cookie\", \"host\"]\n", "headers.allow"),
        ("[presets.mine]\ntargets = [\"gopher://x\"]\n", "presets.mine.targets"),
        ("preset_auth = 1\n", "preset_auth"),
    ];
    for (toml, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = veilgate(dir.path()).arg("check-config").arg("--config").arg(&path).output().await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{toml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "stderr for {toml:?} should name {key}: {stderr}");
    }
}

#[tokio::test]
async fn check_config_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    let ca = crate::support::tls::TestCa::new();
    std::fs::write(
        &path,
        format!(
            "auth_token = \"secret_token_abcdefgh\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            ca.server_cert_file, ca.server_key_file
        ),
    )
    .unwrap();
    let out = veilgate(dir.path()).arg("check-config").env("VEILGATE_CONFIG", &path).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("secret_token_abcdefgh"));
    assert!(stdout.contains("auth_token = \"***\""));
    assert!(stdout.contains("presets.openai"));
    let printed: toml::Table = toml::from_str(&stdout).expect("check-config prints valid TOML");
    assert!(printed["tls"].get("cert_file").is_some() && printed["gemini"].get("max_retries").is_some());
}

#[tokio::test]
async fn check_config_fails_on_files_the_server_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    for (toml, named) in [
        (format!("[tls]\ncert_file = {missing:?}\nkey_file = {missing:?}\n"), "tls.cert_file"),
        (format!("[upstream]\nextra_ca_file = {missing:?}\n"), "extra_ca_file"),
    ] {
        let path = dir.path().join("files.toml");
        std::fs::write(&path, &toml).unwrap();
        let out = veilgate(dir.path()).arg("check-config").arg("--config").arg(&path).output().await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{toml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{stderr}");
    }
}

#[tokio::test]
async fn listen_takes_a_host_name_and_a_port_conflict_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = veilgate(dir.path()).args(["--listen", "localhost:0", "check-config"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("listen = \"127.0.0.1:0\""));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = veilgate(dir.path()).args(["--listen", &addr]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().find(|l| l.contains("cannot listen")).expect("names the failure");
    let reason = error.rsplit(": ").next().unwrap();
    assert_eq!(error.matches(reason).count(), 1, "the OS error once: {error}");
}

#[tokio::test]
async fn bad_environment_variables_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [("PRESET_AUTH_ENABLED", "yes"), ("DEBUG_MODE", "1"), ("AUTH_TOKEN", "short")] {
        let out = veilgate(dir.path()).arg("check-config").env(var, value).output().await.unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{stderr}");
        assert!(!stderr.contains("short\""), "the bad token is not echoed");
    }
}

#[tokio::test]
async fn public_listen_without_auth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = veilgate(dir.path()).args(["--listen", "0.0.0.0:0"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("danger_public_presets") && stderr.contains("preset_auth"), "{stderr}");
}

/// Starts the binary, waits for the "auth token stored" log line, stops it
/// and returns everything it wrote to stderr.
async fn start_and_read_log(home: &std::path::Path) -> String {
    let mut child =
        veilgate(home).args(["--listen", "127.0.0.1:0"]).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if line.contains("auth token stored") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.expect("veilgate started");
    child.kill().await.unwrap();
    log
}

#[tokio::test]
async fn generated_token_is_stored_once_and_not_logged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = start_and_read_log(dir.path()).await;
    let file = dir.path().join("data/veilgate/token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 43);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(log.contains(file.to_str().unwrap()), "the log names the file: {log}");
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().filter_map(|w| w.parse().ok()).nth(1))
        .unwrap_or(0);
    if hard >= 20_000 {
        assert!(!log.contains("WARN"), "a default start warns of nothing: {log}");
    }
    assert!(!log.contains(&token), "the token never appears in the log");
    let log2 = start_and_read_log(dir.path()).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token, "reused on the next start");
    assert!(!log2.contains(&token));
}
