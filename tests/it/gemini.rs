//! Gemini's stream monitor end to end, against the scripted Gemini origin.

use std::time::Duration;

use serde_json::{Value, json};
use veilgate::monitor::prompts::BUILTIN;

use crate::support::client::{End, open_with_body, send};
use crate::support::gemini::{
    Play, Received, STREAM_PATH, answer, finish, gemini_origin, parts, request_body, thought,
};
use crate::support::origin::RawOrigin;
use crate::support::{Veilgate, preset_at};

fn config(origin: &RawOrigin, extra: &str) -> String {
    format!("{}[gemini]\nretry_delay_ms = 10\nmax_retries = 3\n{extra}", preset_at("gemini", origin.addr))
}

/// Streams one request through veilgate and returns what the client got.
async fn stream(vg: &Veilgate, question: &str) -> (u16, Received, End) {
    let body = request_body(question);
    let mut s = open_with_body(
        vg.addr,
        "POST",
        STREAM_PATH,
        &[("x-goog-api-key", "AIza-test"), ("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    let status = s.status;
    let (raw, end) = tokio::time::timeout(Duration::from_secs(30), s.finish()).await.expect("stream ends");
    (status, Received::parse(&raw), end)
}

fn body_of(origin: &RawOrigin, n: usize) -> Value {
    serde_json::from_slice(&origin.requests()[n].body).expect("JSON request body")
}

/// The prompt of a continuation request (its last user turn).
fn prompt_of(body: &Value) -> String {
    let contents = body["contents"].as_array().unwrap();
    contents.last().unwrap()["parts"][0]["text"].as_str().unwrap().to_owned()
}

fn builtin(lang: &str) -> &'static str {
    BUILTIN.iter().find(|(l, _)| *l == lang).unwrap().1
}

#[tokio::test]
async fn thoughts_then_eof_gets_one_continuation() {
    let origin = gemini_origin(vec![
        vec![thought("**Considering scattering**\n\nLight hits air molecules"), Play::Eof],
        vec![answer("The sky looks blue because"), finish(" of Rayleigh scattering.", "STOP")],
    ])
    .await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (status, got, end) = stream(&vg, "Why is the sky blue?").await;
    assert_eq!((status, end), (200, End::Clean));
    assert_eq!(got.text(true), "**Considering scattering**\n\nLight hits air molecules");
    assert_eq!(got.text(false), "The sky looks blue because of Rayleigh scattering.");
    assert_eq!(got.finish_reasons(), ["STOP"], "exactly one finish, at the end");
    assert!(got.errors.is_empty());
    assert!(got.keepalives >= 1, "keep-alive while waiting");
    assert_eq!(origin.requests().len(), 2);

    let second = body_of(&origin, 1);
    let contents = second["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 3);
    assert_eq!(contents[0], json!({ "role": "user", "parts": [{ "text": "Why is the sky blue?" }] }));
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(contents[1]["parts"][0]["text"], "**Considering scattering**\n\nLight hits air molecules");
    assert_eq!(prompt_of(&second), builtin("en"));
    assert_eq!(second["generationConfig"], body_of(&origin, 0)["generationConfig"]);
    // Same target and auth on the continuation.
    let req = &origin.requests()[1];
    assert_eq!(req.target(), "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
    assert_eq!(req.header("x-goog-api-key").as_deref(), Some("AIza-test"));
}

#[tokio::test]
async fn stop_with_only_thoughts_is_continued() {
    let origin = gemini_origin(vec![
        vec![Play::Event(parts(json!([{ "text": "planning the answer", "thought": true }]), Some("STOP")))],
        vec![finish("Here it is.", "STOP")],
    ])
    .await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, end) = stream(&vg, "Explain").await;
    assert_eq!(end, End::Clean);
    assert_eq!(got.finish_reasons(), ["STOP"], "the interrupting STOP was not forwarded");
    assert_eq!(got.text(false), "Here it is.");
    assert_eq!(origin.requests().len(), 2);
}

#[tokio::test]
async fn repeated_tail_at_the_seam_is_cut() {
    let origin = gemini_origin(vec![
        vec![answer("The sky looks blue because molecules scatter"), answer(" short wavelengths mo"), Play::Eof],
        vec![answer("scatter short "), answer("wavelengths more strongly."), finish("", "STOP")],
    ])
    .await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, _) = stream(&vg, "Why?").await;
    assert_eq!(got.text(false), "The sky looks blue because molecules scatter short wavelengths more strongly.");
    let second = body_of(&origin, 1);
    assert_eq!(
        second["contents"][1]["parts"][0]["text"],
        "The sky looks blue because molecules scatter short wavelengths mo"
    );
}

#[tokio::test]
async fn final_reasons_are_never_retried() {
    let cases: Vec<(Play, &str)> = vec![
        (finish("partial", "SAFETY"), "SAFETY"),
        (finish("long answer", "MAX_TOKENS"), "MAX_TOKENS"),
        (finish("", "IMAGE_SAFETY"), "IMAGE_SAFETY"),
        (finish("quoted", "RECITATION"), "RECITATION"),
        (Play::Event(json!({ "promptFeedback": { "blockReason": "SAFETY" } })), ""),
    ];
    for (last, reason) in cases {
        let origin = gemini_origin(vec![vec![thought("hmm"), last]]).await;
        let vg = Veilgate::start(&config(&origin, "")).await;
        let (status, got, end) = stream(&vg, "Q").await;
        assert_eq!((status, end), (200, End::Clean));
        assert_eq!(origin.requests().len(), 1, "{reason}: exactly one upstream request");
        if !reason.is_empty() {
            assert_eq!(got.finish_reasons(), [reason]);
        } else {
            assert_eq!(got.events.last().unwrap()["promptFeedback"]["blockReason"], "SAFETY");
        }
        assert!(got.errors.is_empty());
    }
}

#[tokio::test]
async fn other_reason_is_continued() {
    let origin = gemini_origin(vec![vec![finish("Half", "OTHER")], vec![finish(" and the rest.", "STOP")]]).await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, _) = stream(&vg, "Q").await;
    assert_eq!(got.finish_reasons(), ["STOP"]);
    assert_eq!(got.text(false), "Half and the rest.");
    assert_eq!(origin.requests().len(), 2);
}

#[tokio::test]
async fn function_call_then_eof_is_not_reissued() {
    let call = Play::Event(parts(
        json!([{ "functionCall": { "name": "get_weather", "args": { "city": "Paris" } }, "thoughtSignature": "c2ln" }]),
        None,
    ));
    let origin = gemini_origin(vec![vec![thought("need weather"), call, Play::Eof]]).await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, end) = stream(&vg, "Weather in Paris?").await;
    assert_eq!(end, End::Clean);
    assert_eq!(origin.requests().len(), 1, "the call reached the client; it must not be issued twice");
    assert!(got.raw.contains("get_weather"));
}

#[tokio::test]
async fn every_attempt_truncated_gives_one_error_event() {
    let origin = gemini_origin(vec![vec![answer("never finishes"), Play::Eof]]).await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (status, got, end) = stream(&vg, "Q").await;
    assert_eq!(status, 200);
    assert_eq!(end, End::Clean, "the error event ends the stream");
    assert_eq!(origin.requests().len(), 4, "max_retries (3) + 1");
    assert_eq!(got.errors.len(), 1);
    assert_eq!(got.errors[0]["error"]["code"], 504);
    assert_eq!(got.errors[0]["error"]["status"], "DEADLINE_EXCEEDED");
    assert!(got.finish_reasons().is_empty(), "a truncated stream never looks finished");
    let error_line = got.raw.lines().find(|l| l.starts_with("data: {\"error\"")).unwrap();
    assert!(serde_json::from_str::<Value>(&error_line[6..]).is_ok(), "single-line data");
}

#[tokio::test]
async fn refused_continuation_ends_with_its_status() {
    let origin = gemini_origin(vec![
        vec![answer("cut"), Play::Eof],
        vec![Play::Status(
            403,
            json!({ "error": { "code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED" } }),
        )],
    ])
    .await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, _) = stream(&vg, "Q").await;
    assert_eq!(origin.requests().len(), 2);
    assert_eq!(got.errors.len(), 1);
    assert_eq!(got.errors[0]["error"]["code"], 403);
    assert_eq!(got.errors[0]["error"]["status"], "PERMISSION_DENIED");
}

#[tokio::test]
async fn first_request_error_status_passes_through() {
    let error = json!({ "error": { "code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED" } });
    let origin = gemini_origin(vec![vec![Play::Status(429, error.clone())]]).await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let r =
        send(vg.addr, "POST", STREAM_PATH, &[("content-type", "application/json")], request_body("Q").as_bytes()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), error);
    assert_eq!(r.header("x-proxy-error"), None);
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn continuation_prompt_follows_the_language() {
    let cases = [
        ("zh", "天空之所以呈现蓝色，是因为大气中的分子对短波长的光散射得更强烈"),
        ("ja", "空が青く見えるのは、大気中の分子が短い波長の光をより強く散乱するためです"),
        ("ko", "하늘이 파랗게 보이는 이유는 대기 중의 분자가 짧은 파장의 빛을 더 강하게 산란시키기 때문입니다"),
        ("ru", "Небо кажется голубым, потому что молекулы в атмосфере сильнее рассеивают короткие волны"),
        (
            "de",
            "Der Himmel erscheint blau, weil die Moleküle in der Atmosphäre kurzwelliges Licht stärker streuen. Übrigens",
        ),
        ("fr", "Le ciel paraît bleu parce que les molécules de l'atmosphère diffusent davantage la lumière"),
        ("es", "El cielo se ve azul porque las moléculas de la atmósfera dispersan más la luz de onda corta"),
    ];
    for (lang, text) in cases {
        let origin = gemini_origin(vec![vec![answer(text), Play::Eof], vec![finish("…", "STOP")]]).await;
        let vg = Veilgate::start(&config(&origin, "")).await;
        stream(&vg, "Why is the sky blue?").await;
        assert_eq!(prompt_of(&body_of(&origin, 1)), builtin(lang), "{lang}");
    }
}

#[tokio::test]
async fn prompt_overrides_apply() {
    let origin =
        gemini_origin(vec![vec![answer("天空之所以呈现蓝色，是因为"), Play::Eof], vec![finish("散射。", "STOP")]])
            .await;
    let vg = Veilgate::start(&config(&origin, "[gemini.prompts]\nzh = \"请继续\"\n")).await;
    stream(&vg, "为什么天空是蓝色的？").await;
    assert_eq!(prompt_of(&body_of(&origin, 1)), "请继续");
}

#[tokio::test]
async fn cjk_split_byte_by_byte_arrives_identical() {
    let text = "天空之所以呈现蓝色，是因为瑞利散射。空が青い理由。하늘이 파란 이유.";
    let origin = gemini_origin(vec![vec![
        Play::EventByteByByte(parts(json!([{ "text": text }]), None)),
        Play::EventByteByByte(parts(json!([{ "text": "終わり" }]), Some("STOP"))),
    ]])
    .await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, end) = stream(&vg, "Q").await;
    assert_eq!(end, End::Clean);
    assert_eq!(got.text(false), format!("{text}終わり"));
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn data_without_space_and_crlf_is_understood() {
    let last = parts(json!([{ "text": " done." }]), Some("STOP"));
    let first = parts(json!([{ "text": "All" }]), None);
    let origin = gemini_origin(vec![vec![
        Play::Raw(format!("data:{first}\r\n\r\n")),
        Play::Raw(": comment from the server\r\n\r\n".to_owned()),
        Play::Raw(format!("data:{last}\n\n")),
    ]])
    .await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, _) = stream(&vg, "Q").await;
    assert_eq!(got.text(false), "All done.");
    assert_eq!(origin.requests().len(), 1, "no spurious retry");
}

#[tokio::test]
async fn usage_is_summed_over_attempts() {
    let origin = gemini_origin(vec![vec![answer("part one"), Play::Eof], vec![finish(" part two", "STOP")]]).await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (_, got, _) = stream(&vg, "Q").await;
    let last = got.events.last().unwrap();
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 18);
    assert_eq!(last["usageMetadata"]["totalTokenCount"], 28);
}

#[tokio::test]
async fn idle_watchdog_continues_a_stalled_stream() {
    let origin =
        gemini_origin(vec![vec![answer("stalls here"), Play::Hang], vec![finish(" then ends.", "STOP")]]).await;
    let vg = Veilgate::start(&config(&origin, "idle_timeout_ms = 300\n")).await;
    let (_, got, _) = stream(&vg, "Q").await;
    assert_eq!(got.text(false), "stalls here then ends.");
    assert_eq!(origin.requests().len(), 2);
}

#[tokio::test]
async fn client_leaving_during_the_wait_stops_everything() {
    let origin = gemini_origin(vec![vec![answer("cut"), Play::Eof], vec![finish(" rest", "STOP")]]).await;
    let vg = Veilgate::start(&format!("{}[gemini]\nretry_delay_ms = 400\n", preset_at("gemini", origin.addr))).await;
    let body = request_body("Q");
    let mut s = open_with_body(vg.addr, "POST", STREAM_PATH, &[], body.as_bytes()).await;
    s.read_until(b": keepalive").await.expect("the monitor is waiting to continue");
    drop(s);
    // Longer than the retry delay: a continuation would have been sent by now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(origin.requests().len(), 1, "no continuation after the client left");
}

#[tokio::test]
async fn monitor_can_be_turned_off() {
    let origin = gemini_origin(vec![vec![answer("cut"), Play::Eof]]).await;
    let vg = Veilgate::start(&config(&origin, "enabled = false\n")).await;
    let (_, _, end) = stream(&vg, "Q").await;
    assert_eq!(end, End::Aborted, "without the monitor the truncation shows as an aborted body");
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn google_genai_sdk_streams_a_continued_answer() {
    if !crate::sdk::python_has("google.genai") {
        return;
    }
    let origin = gemini_origin(vec![
        vec![thought("thinking"), answer("Hello from"), Play::Eof],
        vec![finish(" the continued stream.", "STOP")],
    ])
    .await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/genai_stream.py");
    let out = tokio::process::Command::new(crate::sdk::python())
        .arg(script)
        .arg(format!("{}/gemini", vg.url()))
        .output()
        .await
        .expect("run python3");
    assert!(out.status.success(), "SDK failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello from the continued stream.");
    assert_eq!(origin.requests().len(), 2);
    let first = &origin.requests()[0];
    assert!(first.target().ends_with(":streamGenerateContent?alt=sse"), "{}", first.target());
    assert!(first.header("x-goog-api-client").is_none(), "SDK fingerprint stripped");
}

#[tokio::test]
async fn an_answer_too_long_to_carry_ends_with_the_error_event_instead_of_a_continuation() {
    let chunk = "lorem ipsum ".repeat(500); // 6 KB per event
    let mut plays: Vec<Play> = (0..200).map(|_| answer(&chunk)).collect(); // 1.2 MB
    plays.push(Play::Eof);
    let origin = gemini_origin(vec![plays, vec![finish("never asked for", "STOP")]]).await;
    let vg = Veilgate::start(&config(&origin, "")).await;
    let (status, got, end) = stream(&vg, "Write a long text").await;
    assert_eq!((status, end), (200, End::Clean));
    assert_eq!(got.text(false).len(), 200 * chunk.len(), "everything received was forwarded");
    assert_eq!(origin.requests().len(), 1, "no continuation of more than 1 MiB was sent");
    assert_eq!(got.errors.len(), 1);
    assert_eq!(got.errors[0]["error"]["code"], 504);
    assert!(got.finish_reasons().is_empty(), "a cut stream never looks finished");
}
