//! Several targets, retries and health (SPEC §13) against loopback origins
//! that fail in each way — 429 with and without `retry-after`, 500 once,
//! 503 for good, a reset before the head, no answer at all, a 400, a
//! target that is down for a while and then recovers — counting the
//! attempts each origin saw and their spacing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Veilgate;
use crate::support::client::send;
use crate::support::origin::{RawOrigin, Step, json_response};

/// An origin whose `n`-th answer (from 0) is `script(n)`, and when each
/// request arrived.
async fn counted(script: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static) -> (RawOrigin, Arc<Mutex<Vec<Instant>>>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let (seen, n) = (Arc::clone(&times), AtomicUsize::new(0));
    let origin = RawOrigin::scripted(move |_| {
        seen.lock().unwrap().push(Instant::now());
        script(n.fetch_add(1, Ordering::SeqCst))
    })
    .await;
    (origin, times)
}

fn status(code: u16, extra: &str) -> Vec<Step> {
    let body = format!("{{\"error\":{{\"code\":{code}}}}}");
    vec![Step::text(&format!(
        "HTTP/1.1 {code} Failing\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    ))]
}

fn ok(body: &str) -> Vec<Step> {
    vec![Step::Write(json_response(body))]
}

fn gaps(times: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let t = times.lock().unwrap();
    t.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn statuses_in_retry_on_go_again_with_backoff_and_retry_after() {
    // 500 once, then fine: the same target again after the backoff.
    let (once, once_t) = counted(|n| if n == 0 { status(500, "") } else { ok("{\"n\":2}") }).await;
    // 429 with retry-after: 1 s, then fine.
    let (after, after_t) = counted(|n| if n == 0 { status(429, "retry-after: 1\r\n") } else { ok("{}") }).await;
    // 429 without it: backoff, doubling.
    let (busy, busy_t) = counted(|n| if n < 2 { status(429, "") } else { ok("{}") }).await;
    // 503 for good: every attempt used, the last 503 as it came.
    let (down, down_t) = counted(|_| status(503, "x-origin: yes\r\n")).await;
    // 400 (and 404) are the request's fault: never again.
    let (bad, bad_t) = counted(|_| status(400, "")).await;
    let retry = "retry = { attempts = 3, on = [429, 500, 503], backoff_ms = 200 }";
    let mut config = String::new();
    for (name, o) in [("once", &once), ("after", &after), ("busy", &busy), ("down", &down), ("bad", &bad)] {
        config.push_str(&format!("[presets.{name}]\ntargets = [\"http://{}\"]\n{retry}\n", o.addr));
    }
    let vg = Veilgate::start(&config).await;

    let r = send(vg.addr, "POST", "/once/v1/chat/completions", &[], b"{}").await;
    assert_eq!((r.status, r.text()), (200, "{\"n\":2}".to_owned()));
    let g = gaps(&once_t);
    assert_eq!(g.len(), 1);
    assert!(g[0] >= Duration::from_millis(100) && g[0] < Duration::from_millis(1000), "backoff 200 ms, jitter: {g:?}");
    assert_eq!(once.requests()[1].body, b"{}", "the same request again");

    assert_eq!(send(vg.addr, "GET", "/after/v1/models", &[], b"").await.status, 200);
    let g = gaps(&after_t);
    assert!(g[0] >= Duration::from_millis(990), "retry-after: 1 honoured: {g:?}");

    assert_eq!(send(vg.addr, "GET", "/busy/v1/models", &[], b"").await.status, 200);
    let g = gaps(&busy_t);
    assert_eq!(g.len(), 2);
    assert!(g[0] >= Duration::from_millis(100) && g[1] >= Duration::from_millis(200), "doubling: {g:?}");

    let r = send(vg.addr, "GET", "/down/v1/models", &[], b"").await;
    assert_eq!((r.status, r.header("x-origin")), (503, Some("yes")), "the last failure as it came");
    assert_eq!(r.text(), "{\"error\":{\"code\":503}}");
    assert_eq!(down_t.lock().unwrap().len(), 3, "attempts = 3");

    assert_eq!(send(vg.addr, "GET", "/bad/v1/models", &[], b"").await.status, 400);
    assert_eq!(bad_t.lock().unwrap().len(), 1, "a 400 is never sent again");
}

#[tokio::test]
async fn written_and_unanswered_is_never_sent_again_unless_opted_in_and_then_elsewhere() {
    let (reset, reset_t) = counted(|_| vec![Step::Reset]).await;
    let (silent, silent_t) = counted(|_| vec![Step::Hang]).await;
    let (spare, spare_t) = counted(|_| ok("{\"spare\":true}")).await;
    let retry = "retry = { attempts = 3, on = [503], backoff_ms = 10 }\nstrategy = \"ordered\"";
    let vg = Veilgate::start(&format!(
        "[upstream]\nresponse_timeout_ms = 500\n\
         [presets.reset]\ntargets = [\"http://{r}\", \"http://{s}\"]\n{retry}\n\
         [presets.silent]\ntargets = [\"http://{q}\", \"http://{s}\"]\n{retry}\n\
         [presets.optin]\ntargets = [\"http://{r}\", \"http://{s}\"]\n{retry}\nretry_unanswered = true\n",
        r = reset.addr,
        s = spare.addr,
        q = silent.addr
    ))
    .await;
    send(vg.addr, "POST", "/reset/v1/chat/completions", &[], b"{}").await.assert_proxy_error(502);
    send(vg.addr, "POST", "/silent/v1/chat/completions", &[], b"{}").await.assert_proxy_error(504);
    assert_eq!((reset_t.lock().unwrap().len(), silent_t.lock().unwrap().len()), (1, 1), "each sent once");
    assert!(spare_t.lock().unwrap().is_empty(), "the provider may have billed it: never again");

    let r = send(vg.addr, "POST", "/optin/v1/chat/completions", &[], b"{}").await;
    assert_eq!((r.status, r.text()), (200, "{\"spare\":true}".to_owned()));
    assert_eq!(reset_t.lock().unwrap().len(), 2, "one attempt on the reset target per request");
    assert_eq!(spare_t.lock().unwrap().len(), 1, "opted in: the other target");
}

#[tokio::test]
async fn failing_targets_are_ejected_doubling_and_probed_back() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let (flaky, flaky_t) =
        counted(move |_| if flag.load(Ordering::SeqCst) { ok("{\"from\":\"a\"}") } else { status(503, "") }).await;
    let (steady, steady_t) = counted(|_| ok("{\"from\":\"b\"}")).await;
    let vg = Veilgate::start(&format!(
        "[health]\neject_after = 2\neject_for_ms = 300\nmax_eject_ms = 5000\n\
         [presets.api]\ntargets = [\"http://{}\", \"http://{}\"]\nstrategy = \"ordered\"\n\
         retry = {{ attempts = 1, on = [503] }}\n",
        flaky.addr, steady.addr
    ))
    .await;
    let get = || async { send(vg.addr, "GET", "/api/v1/models", &[], b"").await.text() };
    // Two failures (each moved on to b) eject a; then b alone.
    for _ in 0..4 {
        assert_eq!(get().await, "{\"from\":\"b\"}");
    }
    assert_eq!(flaky_t.lock().unwrap().len(), 2, "ejected after eject_after = 2");
    assert_eq!(steady_t.lock().unwrap().len(), 4);
    // After 300 ms the next request probes a; it fails: out for 600 ms.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get().await, "{\"from\":\"b\"}");
    assert_eq!(flaky_t.lock().unwrap().len(), 3, "the probe");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get().await, "{\"from\":\"b\"}");
    assert_eq!(flaky_t.lock().unwrap().len(), 3, "doubled: still out after 350 ms");
    // It recovers; the probe after the doubled time readmits it.
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get().await, "{\"from\":\"a\"}");
    assert_eq!(get().await, "{\"from\":\"a\"}", "readmitted: first in order again");
}

#[tokio::test]
async fn a_target_down_for_a_while_is_retried_with_backoff_until_it_recovers() {
    // A port with nothing behind it, until the origin comes up on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let vg = Veilgate::start(&format!(
        "[presets.api]\ntargets = [\"http://127.0.0.1:{port}\"]\n\
         retry = {{ attempts = 6, on = [503], backoff_ms = 100 }}\n"
    ))
    .await;
    let recovering = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(&json_response("{\"up\":true}")).await.unwrap();
    });
    let started = Instant::now();
    let r = send(vg.addr, "GET", "/api/v1/models", &[], b"").await;
    assert_eq!((r.status, r.text()), (200, "{\"up\":true}".to_owned()), "connection refused is retried on it");
    assert!(started.elapsed() >= Duration::from_millis(250));
    recovering.await.unwrap();

    // Refused for good: every attempt, then the 502.
    let (_dead_held, dead) = crate::support::refused_addr();
    let vg = Veilgate::start(&format!(
        "[presets.api]\ntargets = [\"http://{dead}\"]\nretry = {{ attempts = 2, backoff_ms = 10 }}\n"
    ))
    .await;
    send(vg.addr, "GET", "/api/v1/models", &[], b"").await.assert_proxy_error(502);
}

#[tokio::test]
async fn a_refused_connection_moves_to_the_next_target_at_once() {
    let (_dead_held, dead) = crate::support::refused_addr();
    let (live, live_t) = counted(|_| ok("{}")).await;
    let vg = Veilgate::start(&format!(
        "[presets.api]\ntargets = [\"http://{dead}\", \"http://{}\"]\nstrategy = \"ordered\"\n\
         retry = {{ attempts = 3, backoff_ms = 5000 }}\n",
        live.addr
    ))
    .await;
    let started = Instant::now();
    assert_eq!(send(vg.addr, "POST", "/api/v1/chat/completions", &[], b"{\"a\":1}").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(2500), "no backoff before another target");
    assert_eq!(live.requests()[0].body, b"{\"a\":1}");
    assert_eq!(live_t.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_slow_first_token_moves_the_stream_to_the_next_target() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
    // The head at once, the first event only after 3 s.
    let (slow, slow_t) = counted(move |_| {
        vec![Step::text(head), Step::Sleep(Duration::from_secs(3)), Step::text("data: {\"slow\":1}\n\n"), Step::Close]
    })
    .await;
    // No head at all.
    let (mute, mute_t) = counted(|_| vec![Step::Hang]).await;
    let events = "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n";
    let (quick, quick_t) = counted(move |_| vec![Step::text(head), Step::text(events), Step::Close]).await;
    let vg = Veilgate::start(&format!(
        "[presets.api]\ntargets = [\"http://{}\", \"http://{}\", \"http://{}\"]\nstrategy = \"ordered\"\n\
         first_token_timeout_ms = 400\n\
         [presets.alone]\ntargets = [\"http://{}\"]\nfirst_token_timeout_ms = 400\n",
        slow.addr, mute.addr, quick.addr, slow.addr
    ))
    .await;
    let started = Instant::now();
    let r = send(vg.addr, "POST", "/api/v1/chat/completions", &[], b"{\"stream\":true}").await;
    assert_eq!((r.status, r.text()), (200, events.to_owned()), "the whole stream of the third target");
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    let counts = (slow_t.lock().unwrap().len(), mute_t.lock().unwrap().len(), quick_t.lock().unwrap().len());
    assert_eq!(counts, (1, 1, 1));
    // With nowhere else to go: 504 naming the timeout, sent once.
    let body = send(vg.addr, "POST", "/alone/v1/chat/completions", &[], b"{}").await.assert_proxy_error(504);
    assert!(body["error"]["message"].as_str().unwrap().contains("first_token_timeout_ms"), "{body}");
    assert_eq!(slow_t.lock().unwrap().len(), 2);
}
