//! Operating veilgate: the dashboard in a real browser, `/metrics`, the TLS
//! listener, and graceful shutdown of the binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::support::binary;
use crate::support::client::{End, open, send};
use crate::support::origin::{RawOrigin, Step};
use crate::support::tls::TestCa;
use crate::support::{TOKEN, Veilgate, preset_at};

fn chromium() -> Option<&'static str> {
    let found =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "chromium is missing; .ci/run must install it");
        eprintln!("skipping: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// Runs headless Chromium on `url` with extra arguments; returns stdout.
async fn run_chromium(bin: &str, profile: &std::path::Path, url: &str, extra: &[String]) -> String {
    let out = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dashboard_in_a_real_browser() {
    let Some(bin) = chromium() else { return };
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!(
        "{}[presets.localfetch]\ntargets = [\"http://{}\"]\nforce_fetch = true\n",
        preset_at("openai", origin.addr),
        origin.addr
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let netlog = dir.path().join("net.json");
    let url = format!("{}/#builder:scheme=https&host=api.example.com:8443&path=/v1/models?limit=5", vg.url());
    let dom = run_chromium(
        bin,
        &dir.path().join("profile"),
        &url,
        &["--dump-dom".to_owned(), format!("--log-net-log={}", netlog.display())],
    )
    .await;

    // Every enabled preset is listed with its copy URL, and the transport state shows.
    let config = veilgate::config::Config::from_raw(veilgate::config::RawConfig::default(), &|_| None).unwrap();
    for p in config.presets.iter() {
        assert!(dom.contains(&format!("data-url=\"{}/{}\"", vg.url(), p.route)), "preset {} missing", p.route);
    }
    assert!(dom.contains("forced fetch"), "the force-fetch preset shows its transport");
    // The builder turned the typed host and path into a generic route.
    let built = format!("{}/&lt;token&gt;/https/api.example.com:8443/v1/models?limit=5", vg.url());
    assert!(dom.contains(&built), "builder output missing: expected {built}");
    assert!(!dom.contains(TOKEN), "the server never puts the token in the page");

    // No request the page made left for another origin (the browser's own
    // background traffic has no page initiator and is not the page's doing).
    let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&netlog).unwrap()).unwrap();
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64().unwrap();
    let own = vg.url();
    let mut page_requests = Vec::new();
    for e in log["events"].as_array().unwrap() {
        if e["type"].as_u64() != Some(start_job) {
            continue;
        }
        let url = e["params"]["url"].as_str().unwrap_or_default().to_owned();
        let initiator = e["params"]["initiator"].as_str().unwrap_or_default();
        if url.starts_with(&own) || initiator.starts_with(&own) {
            page_requests.push(url);
        }
    }
    assert!(page_requests.iter().any(|u| u.starts_with(&own)), "the page load was recorded");
    let foreign: Vec<_> = page_requests.iter().filter(|u| !u.starts_with(&own)).collect();
    assert!(foreign.is_empty(), "the page requested other origins: {foreign:?}");

    // A screenshot for people (kept when VEILGATE_SCREENSHOT names a path).
    if let Some(path) = std::env::var_os("VEILGATE_SCREENSHOT") {
        let shot = std::path::PathBuf::from(path);
        run_chromium(
            bin,
            &dir.path().join("profile2"),
            &url,
            &[
                format!("--screenshot={}", shot.display()),
                "--window-size=1280,2150".to_owned(),
                "--hide-scrollbars".to_owned(),
            ],
        )
        .await;
        assert!(shot.exists());
    }
}

#[tokio::test]
async fn dashboard_is_cached_with_an_etag() {
    let vg = Veilgate::start("").await;
    let first = send(vg.addr, "GET", "/", &[], b"").await;
    let etag = first.header("etag").unwrap().to_owned();
    let again = send(vg.addr, "GET", "/", &[("if-none-match", &etag)], b"").await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert!(first.header("content-security-policy").unwrap().contains("connect-src 'self'"));
}

/// Checks the OpenMetrics text format line by line and returns the samples.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad metric name: {line}");
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.push((series.to_owned(), value));
    }
    samples
}

async fn metrics(vg: &Veilgate) -> Vec<(String, f64)> {
    let r = send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await;
    assert_eq!(r.status, 200);
    parse_metrics(&r.text())
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).map_or(0.0, |(_, v)| *v)
}

#[tokio::test]
async fn open_tunnels_are_counted_per_server() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let origin = crate::support::ws_origin::WsOrigin::start(crate::support::ws_origin::Behavior::Echo, None).await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let other = Veilgate::start("").await;
    let tcp = tokio::net::TcpStream::connect(vg.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/openai/ws", vg.addr), tcp).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    assert_eq!(sample(&metrics(&vg).await, "veilgate_tunnels_open"), 1.0);
    assert_eq!(sample(&metrics(&other).await, "veilgate_tunnels_open"), 0.0, "another server's tunnels");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&metrics(&vg).await, "veilgate_tunnels_open") != 0.0 {
        assert!(Instant::now() < deadline, "the closed tunnel is still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_traffic_and_need_the_token() {
    let origin = RawOrigin::json("{}").await;
    let vg = Veilgate::start(&format!(
        "{}[presets.viafetch]\ntargets = [\"http://{}\"]\nforce_fetch = true\n",
        preset_at("openai", origin.addr),
        origin.addr
    ))
    .await;
    send(vg.addr, "GET", "/metrics", &[], b"").await.assert_proxy_error(401);
    send(vg.addr, "GET", "/metrics", &[("authorization", "Bearer wrong_token_000000")], b"")
        .await
        .assert_proxy_error(401);
    let before = metrics(&vg).await;
    for _ in 0..3 {
        assert_eq!(send(vg.addr, "POST", "/openai/v1/chat/completions", &[], b"{}").await.status, 200);
    }
    send(vg.addr, "GET", "/nope", &[], b"").await;
    let series = r#"veilgate_requests_total{route="openai",transport="socket",status="2xx"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = metrics(&vg).await;
        if sample(&m, series) >= 3.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&after, series) - sample(&before, series), 3.0, "requests counted");
    assert!(sample(&after, r#"veilgate_requests_total{route="local",transport="none",status="4xx"}"#) >= 1.0);
    assert!(sample(&after, "veilgate_upstream_seconds_count") >= 3.0);
    assert!(sample(&after, "veilgate_first_byte_seconds_count") >= 3.0);
    assert_eq!(sample(&after, "veilgate_pool_connections"), 1.0, "one idle pooled connection");
    assert_eq!(sample(&after, "veilgate_tunnels_open"), 0.0);
    // A forced-fetch request is counted as a fallback.
    assert_eq!(send(vg.addr, "GET", "/viafetch/v1/models", &[], b"").await.status, 200);
    let m = metrics(&vg).await;
    assert_eq!(sample(&m, r#"veilgate_fallbacks_total{reason="force"}"#), 1.0);
}

#[tokio::test]
async fn tls_listener_serves_http1_and_http2() {
    let ca = TestCa::new();
    let vg = Veilgate::start(&format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        ca.server_cert_file, ca.server_key_file
    ))
    .await;
    for (alpn, want) in [(&b"h2"[..], http::Version::HTTP_2), (&b"http/1.1"[..], http::Version::HTTP_11)] {
        let tcp = tokio::net::TcpStream::connect(vg.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[alpn]));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = http::Request::get(format!("https://localhost:{}/healthz", vg.addr.port()))
            .header("host", format!("localhost:{}", vg.addr.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = if want == http::Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        assert_eq!(resp.version(), want);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"{\"status\":\"ok\""));
    }
}

#[tokio::test]
async fn sigterm_lets_a_stream_in_flight_finish() {
    let origin = RawOrigin::scripted(|_| {
        let mut steps = vec![Step::text(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )];
        for i in 0..6 {
            let ev = format!("data: {i}\n\n");
            steps.push(Step::text(&format!("{:x}\r\n{ev}\r\n", ev.len())));
            steps.push(Step::Sleep(Duration::from_millis(150)));
        }
        steps.push(Step::text("0\r\n\r\n"));
        steps
    })
    .await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\nshutdown_grace_ms = 10000\n{}",
        preset_at("openai", origin.addr)
    );
    let running = binary::start(&config, &[("RUST_LOG", "info")]).await;
    let (mut child, addr, mut lines) = (running.child, running.addr, running.lines);
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut stream = open(addr, "GET", "/openai/v1/stream", &[]).await;
    assert_eq!(stream.read_until(b"\n\n").await.unwrap(), b"data: 0\n\n");
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let (rest, end) = tokio::time::timeout(Duration::from_secs(10), stream.finish()).await.unwrap();
    assert_eq!(end, End::Clean, "the stream in flight completed");
    assert_eq!(String::from_utf8(rest).unwrap().matches("data: ").count(), 5);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "veilgate exits 0 after a graceful shutdown: {status}");
}

/// `(soft, hard)` "Max open files" of a process.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files line");
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().expect("soft"), numbers.next().expect("hard"))
}

fn fd_table_size(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status.lines().find_map(|l| l.strip_prefix("FDSize:")).expect("FDSize").trim().parse().expect("number")
}

#[tokio::test]
#[cfg(target_os = "linux")]
async fn open_files_limit_is_raised_and_the_fd_table_grown_at_start() {
    let (_, hard) = open_files_limit(std::process::id());
    if hard < 2048 {
        eprintln!("skipped: the hard open-files limit ({hard}) leaves nothing to raise");
        return;
    }
    let config = "listen = \"127.0.0.1:0\"\nauth_token = \"0123456789abcdef0123\"\n[limits]\nmax_connections = 600\n";
    let vg = binary::start_after(config, &[], Some("ulimit -S -n 512")).await;
    let pid = vg.child.id().expect("pid");
    assert_eq!(open_files_limit(pid), (hard, hard), "the soft limit was raised to the hard one");
    // Two descriptors per connection plus room: the table was sized for it
    // before the first connection, so it never grows (and stalls) later.
    assert!(fd_table_size(pid) >= 2 * 600 + 256, "descriptor table: {}", fd_table_size(pid));
}
