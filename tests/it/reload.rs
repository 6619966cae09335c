//! Live reload (SPEC §13) of the binary as a user runs it: SIGHUP and a
//! changed file swap the configuration; a bad file keeps the old one; a
//! stream open across the reload completes; what stays keeps its state
//! (rate-limit buckets, ejected targets).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::support::TOKEN;
use crate::support::binary::{self, Running};
use crate::support::client::send;
use crate::support::origin::{RawOrigin, Step, json_response};

fn config(body: &str) -> String {
    format!("listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\n{body}")
}

/// Writes `text` as the config file; the digest its reload logs.
fn rewrite(vg: &Running, text: &str) -> String {
    std::fs::write(&vg.config_path, text).unwrap();
    format!("sha256:{}", veilgate::client::to_hex(&veilgate::client::sha256(text.as_bytes())))
}

async fn health(vg: &Running) -> serde_json::Value {
    send(vg.addr, "GET", "/healthz", &[], b"").await.json()
}

async fn reloads(vg: &Running) -> String {
    let auth = format!("Bearer {TOKEN}");
    let text = send(vg.addr, "GET", "/metrics", &[("authorization", &auth)], b"").await.text();
    text.lines().filter(|l| l.starts_with("veilgate_config_reloads_total")).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn sighup_and_a_changed_file_swap_the_config_and_a_bad_file_keeps_the_old() {
    let a = RawOrigin::json("{\"from\":\"a\"}").await;
    let b = RawOrigin::json("{\"from\":\"b\"}").await;
    let preset = |o: &RawOrigin| config(&format!("[presets.api]\ntargets = [\"http://{}\"]\n", o.addr));
    let mut vg = binary::start(&preset(&a), &[("RUST_LOG", "info")]).await;
    let before = health(&vg).await;
    assert!(before["config"].as_str().unwrap().starts_with("sha256:"), "{before}");
    assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.text(), "{\"from\":\"a\"}");

    // (The file watch may see the change before the signal arrives: each
    // wait is for the reload of that content, by its digest.)
    let digest = rewrite(&vg, &preset(&b));
    vg.hangup();
    vg.wait_for_line(&digest).await;
    assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.text(), "{\"from\":\"b\"}");
    let after = health(&vg).await;
    assert_eq!(after["config"], digest.as_str());
    assert_ne!(after["config"], before["config"]);

    // A file that does not validate: an error naming the key, the old
    // configuration stays.
    std::fs::write(&vg.config_path, config("[presets.api]\ntargets = []\n")).unwrap();
    vg.hangup();
    let line = vg.wait_for_line("reload failed").await;
    assert!(line.contains("presets.api.targets"), "{line}");
    assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.text(), "{\"from\":\"b\"}");
    assert_eq!(health(&vg).await["config"], after["config"]);
    assert!(after["config_loaded_at"].as_str().unwrap().ends_with('Z'), "{after}");

    // No signal: the changed file is noticed by itself.
    let digest = rewrite(&vg, &preset(&a));
    let line = vg.wait_for_line(&digest).await;
    assert!(line.contains("signal=false"), "{line}");
    assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.text(), "{\"from\":\"a\"}");
    let counted = reloads(&vg).await;
    let count = |result: &str| -> u64 {
        let line = counted.lines().find(|l| l.contains(&format!("result=\"{result}\""))).unwrap_or("x 0");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("ok") >= 2 && count("error") >= 1, "{counted}");

    // listen and data_dir take a restart: said, and nothing moves.
    rewrite(&vg, &preset(&a).replace("127.0.0.1:0", "127.0.0.1:1"));
    vg.hangup();
    vg.wait_for_line("takes a restart").await;
    assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.status, 200);
}

#[tokio::test]
async fn a_stream_open_across_a_reload_completes_with_the_config_it_started_with() {
    let gate = Arc::new(Semaphore::new(0));
    let held = Arc::clone(&gate);
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
    let (one, two) = (chunk("data: 1\n\n"), chunk("data: 2\n\n"));
    let old = RawOrigin::scripted(move |_| {
        vec![
            Step::text(head),
            Step::text(&one),
            Step::Wait(Arc::clone(&held)),
            Step::text(&two),
            Step::text("0\r\n\r\n"),
        ]
    })
    .await;
    let new = RawOrigin::json("{\"new\":true}").await;
    let preset = |o: &RawOrigin| config(&format!("[presets.api]\ntargets = [\"http://{}\"]\n", o.addr));
    let mut vg = binary::start(&preset(&old), &[("RUST_LOG", "info")]).await;

    let mut stream = tokio::net::TcpStream::connect(vg.addr).await.unwrap();
    stream.write_all(b"GET /api/stream HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: 1") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let digest = rewrite(&vg, &preset(&new));
    vg.hangup();
    vg.wait_for_line(&digest).await;
    assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.text(), "{\"new\":true}", "new requests: new config");
    gate.add_permits(1);
    while !String::from_utf8_lossy(&got).ends_with("0\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream was cut by the reload");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("data: 1") && text.contains("data: 2"), "{text}");
}

#[tokio::test]
async fn a_reload_keeps_what_buckets_used_and_which_targets_are_out() {
    let down = RawOrigin::scripted(|_| vec![Step::text("HTTP/1.1 503 Down\r\ncontent-length: 0\r\n\r\n")]).await;
    let up = RawOrigin::start(|_| json_response("{\"up\":true}")).await;
    let body = |rpm: u32, extra: &str| {
        config(&format!(
            "[health]\neject_after = 1\neject_for_ms = 60000\nmax_eject_ms = 60000\n\
             [presets.api]\ntargets = [\"http://{}\", \"http://{}\"]\nstrategy = \"ordered\"\n\
             retry = {{ attempts = 1, on = [503] }}\nrequests_per_minute = {rpm}\n{extra}",
            down.addr, up.addr
        ))
    };
    let mut vg = binary::start(&body(3, ""), &[("RUST_LOG", "info")]).await;
    for _ in 0..2 {
        assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.status, 200);
    }
    assert_eq!(down.requests().len(), 1, "out after one failure, for a minute");
    // The limit grows from 3 to 4: 2 were used, so 2 are left — not 4.
    let digest = rewrite(&vg, &body(4, "name = \"API\"\n"));
    vg.hangup();
    vg.wait_for_line(&digest).await;
    for _ in 0..2 {
        assert_eq!(send(vg.addr, "GET", "/api/x", &[], b"").await.status, 200);
    }
    send(vg.addr, "GET", "/api/x", &[], b"").await.assert_proxy_error(429);
    assert_eq!(down.requests().len(), 1, "the ejected target stayed out across the reload");
    assert_eq!(up.requests().len(), 4);
}

#[tokio::test]
async fn a_reload_reads_the_tls_certificate_again() {
    use crate::support::tls::TestCa;
    let (first, second) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first.server_cert_file, &cert).unwrap();
    std::fs::copy(&first.server_key_file, &key).unwrap();
    let text = config(&format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"));
    let mut vg = binary::start(&text, &[("RUST_LOG", "info")]).await;
    let addr = vg.addr;
    let handshake = |ca: &TestCa| {
        let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]));
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await.is_ok()
        }
    };
    assert!(handshake(&first).await && !handshake(&second).await);
    // The certificate is renewed in place; the config file is the same.
    std::fs::copy(&second.server_cert_file, &cert).unwrap();
    std::fs::copy(&second.server_key_file, &key).unwrap();
    vg.hangup();
    vg.wait_for_line("configuration reloaded").await;
    assert!(handshake(&second).await, "the new certificate is served");
    assert!(!handshake(&first).await);
}
