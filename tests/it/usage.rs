//! Clients' usage and limits (SPEC §11) against real loopback origins that
//! answer as OpenAI, Anthropic and Gemini do: JSON and SSE, cut streams,
//! failed attempts; limits of every kind, the concurrency rule, `/usage`
//! as a client and as the admin.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::support::client::{Reply, send};
use crate::support::origin::{RawOrigin, Step};
use crate::support::{TOKEN, Veilgate, preset_at};

pub const ALICE: &str = "alice_token_0123456789abcdef";
pub const BOB: &str = "bob_token_0123456789abcdefgh";

/// A chunked `text/event-stream` response, one chunk per event.
pub fn sse_response(events: &[String]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for e in events {
        out.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The chunked head and events of a stream that is then cut (no last chunk).
fn sse_cut(events: &[String]) -> Vec<Step> {
    let mut full = sse_response(events);
    full.truncate(full.len() - 5);
    vec![Step::Write(full), Step::CloseAbruptly]
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// alice and bob on presets openai, claude and gemini at `origin`, with
/// `alice_limits` (TOML lines) and prices for the test models.
fn config(origin: SocketAddr, alice_limits: &str, extra: &str) -> String {
    format!(
        "{}{}{}{extra}\n\
         [[clients]]\nname = \"alice\"\ntoken = \"{ALICE}\"\n[clients.limits]\n{alice_limits}\n\
         [[clients]]\nname = \"bob\"\ntoken = \"{BOB}\"\n\
         [pricing]\n\"gpt-4o-mini*\" = {{ input = 0.15, output = 0.60, cached_input = 0.075 }}\n\
         \"claude-*\" = {{ input = 3.0, output = 15.0, cache_write = 3.75, cache_read = 0.30 }}\n\
         \"gemini-2.5-flash\" = {{ input = 0.30, output = 2.50 }}\n",
        preset_at("openai", origin),
        preset_at("claude", origin),
        preset_at("gemini", origin),
    )
}

async fn post(vg: &Veilgate, token: &str, path: &str, body: &Value) -> Reply {
    let body = body.to_string();
    let headers = [("x-veilgate-token", token), ("content-type", "application/json")];
    send(vg.addr, "POST", path, &headers, body.as_bytes()).await
}

async fn usage(vg: &Veilgate, token: &str, query: &str) -> Reply {
    send(vg.addr, "GET", &format!("/usage{query}"), &[("authorization", &format!("Bearer {token}"))], b"").await
}

/// The newest request of `client`, as `/usage/requests` lists it.
async fn last_request(vg: &Veilgate, client: &str) -> Value {
    let reply = usage(vg, TOKEN, &format!("/requests?client={client}&limit=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["data"][0].clone()
}

const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000000,"completion_tokens":2000000,"total_tokens":3000000,"prompt_tokens_details":{"cached_tokens":400000}}}"#;

#[tokio::test]
async fn a_json_answer_is_counted_priced_and_its_headers_include_it() {
    let origin = RawOrigin::json(CHAT).await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_requests = 10", "")).await;
    let ask = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &ask).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), CHAT, "the bytes are the origin's");
    // 0.6 M fresh input at 0.15, 0.4 M cached at 0.075, 2 M output at 0.60.
    let cost = 0.6 * 0.15 + 0.4 * 0.075 + 2.0 * 0.60;
    assert_eq!(reply.header("x-veilgate-client"), Some("alice"));
    assert_eq!(reply.header("x-veilgate-monthly-requests"), Some("1"));
    assert_eq!(reply.header("x-veilgate-monthly-tokens"), Some("3000000"));
    let header_cost: f64 = reply.header("x-veilgate-cost-usd").unwrap().parse().unwrap();
    assert!((header_cost - cost).abs() < 1e-9, "{header_cost} vs {cost}");
    assert_eq!(reply.header("x-veilgate-monthly-cost-usd"), reply.header("x-veilgate-cost-usd"));

    let r = last_request(&vg, "alice").await;
    assert_eq!(r["model"], "gpt-4o-mini-2024-07-18", "the response's model");
    assert_eq!((r["input_tokens"].as_u64(), r["output_tokens"].as_u64()), (Some(1_000_000), Some(2_000_000)));
    assert_eq!((r["cached_tokens"].as_u64(), r["estimated"].as_bool()), (Some(400_000), Some(false)));
    assert_eq!(
        (r["status"].as_u64(), r["preset"].as_str(), r["attempts"].as_u64()),
        (Some(200), Some("openai"), Some(1))
    );
    assert!(humantime::parse_rfc3339(r["time"].as_str().unwrap()).is_ok());
    for key in ["path", "body", "token", "key"] {
        assert!(r.get(key).is_none(), "{key} is never listed");
    }

    // The admin and anonymous callers are not metered: no figures.
    let reply = post(&vg, TOKEN, "/openai/v1/chat/completions", &ask).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("x-veilgate-client").is_none());
    let all = usage(&vg, TOKEN, "").await.json();
    let alice = all["data"].as_array().unwrap().iter().find(|c| c["client"] == "alice").unwrap().clone();
    assert_eq!(alice["requests"], 1);
}

#[tokio::test]
async fn an_openai_stream_is_asked_for_usage_and_the_client_never_sees_that_chunk() {
    let chunk = |content: &str| {
        data(
            &json!({"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":content},"finish_reason":null}],"usage":null}),
        )
    };
    let usage_chunk = data(
        &json!({"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}),
    );
    let stop = data(
        &json!({"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}),
    );
    let events = vec![chunk("Hel"), chunk("lo"), stop, usage_chunk.clone(), "data: [DONE]\n\n".to_owned()];
    let served = events.clone();
    let origin = RawOrigin::start(move |req| {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        // Like OpenAI: the usage chunk only when asked for.
        let asked = body.pointer("/stream_options/include_usage") == Some(&json!(true));
        let events: Vec<String> = served.iter().filter(|e| asked || !e.contains("\"choices\":[]")).cloned().collect();
        sse_response(&events)
    })
    .await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_tokens = 100000", "")).await;

    let ask = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"x": 1}, "messages": []});
    let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &ask).await;
    assert_eq!(reply.status, 200);
    let sent: Value = serde_json::from_slice(&origin.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": true, "x": 1}), "other options kept");
    let without: String = events.iter().filter(|e| **e != usage_chunk).cloned().collect();
    assert_eq!(reply.text(), without, "every byte but veilgate's usage chunk");
    assert_eq!(reply.header("x-veilgate-monthly-requests"), Some("0"), "a stream's figures are from before it");
    let r = last_request(&vg, "alice").await;
    assert_eq!(
        (r["input_tokens"].as_u64(), r["output_tokens"].as_u64(), r["estimated"].as_bool()),
        (Some(12), Some(3), Some(false))
    );

    // A client that asked for usage gets the chunk, byte for byte.
    let ask = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}});
    let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &ask).await;
    assert_eq!(reply.text(), events.concat());
    assert_eq!(reply.header("x-veilgate-monthly-tokens"), Some("15"));

    // With inject_stream_usage = false the request goes as it came and the
    // answer is estimated.
    let vg = Veilgate::start(&config(origin.addr, "", "[usage]\ninject_stream_usage = false\n")).await;
    let ask = json!({"model": "gpt-4o-mini", "stream": true, "messages": []});
    let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &ask).await;
    assert_eq!(reply.text(), without);
    let sent: Value = serde_json::from_slice(&origin.requests()[2].body).unwrap();
    assert!(sent.get("stream_options").is_none());
    let r = last_request(&vg, "alice").await;
    assert_eq!(r["estimated"], true);
    assert_eq!(r["input_tokens"].as_u64(), Some((ask.to_string().len() as u64).div_ceil(4)));
    assert_eq!(r["output_tokens"].as_u64(), Some(2), "⌈5 bytes of text / 4⌉");
}

fn anthropic_events() -> Vec<String> {
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    vec![
        ev(
            "message_start",
            json!({"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":25,"cache_read_input_tokens":10,"cache_creation_input_tokens":5,"output_tokens":1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there, friend"}}),
        ),
        ev("message_delta", json!({"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":15}})),
        ev(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":30}}),
        ),
        ev("message_stop", json!({"type":"message_stop"})),
    ]
}

#[tokio::test]
async fn anthropic_usage_is_cumulative_and_cache_fields_have_their_prices() {
    let events = anthropic_events();
    let origin = RawOrigin::start(move |_| sse_response(&events)).await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_cost_usd = 5.0", "")).await;
    let ask = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true, "messages": []});
    let reply = post(&vg, ALICE, "/claude/v1/messages", &ask).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), anthropic_events().concat(), "unchanged");
    let r = last_request(&vg, "alice").await;
    // 25 fresh + 10 cache reads + 5 cache writes; the last output (30), never 1 + 15 + 30.
    assert_eq!((r["input_tokens"].as_u64(), r["output_tokens"].as_u64()), (Some(40), Some(30)));
    assert_eq!((r["cached_tokens"].as_u64(), r["cache_write_tokens"].as_u64()), (Some(10), Some(5)));
    let cost = (25.0 * 3.0 + 10.0 * 0.30 + 5.0 * 3.75 + 30.0 * 15.0) / 1e6;
    assert!((r["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12, "{r}");
}

#[tokio::test]
async fn a_cut_stream_is_estimated_and_keeps_what_was_reported() {
    let events = anthropic_events()[..3].to_vec();
    let origin = RawOrigin::scripted(move |_| sse_cut(&events)).await;
    // Passed on as cut (§14's continuation off): §11's estimate.
    let toml = config(origin.addr, "monthly_requests = 5", "")
        .replace("[presets.claude]\n", "[presets.claude]\ncontinue_streams = false\n");
    let vg = Veilgate::start(&toml).await;
    let ask = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true, "messages": []});
    let reply = post(&vg, ALICE, "/claude/v1/messages", &ask).await;
    assert!(!reply.complete, "a cut stream never looks complete");
    let r = last_request(&vg, "alice").await;
    assert_eq!(r["estimated"], true);
    assert_eq!(r["input_tokens"].as_u64(), Some(40), "message_start's input is kept");
    assert_eq!(r["output_tokens"].as_u64(), Some(5), "⌈19 bytes of text / 4⌉");
}

#[tokio::test]
async fn gemini_usage_metadata_is_cumulative_and_thoughts_are_output() {
    let chunk = |text: &str, finish: Option<&str>, prompt: u64, cand: u64, thoughts: u64| {
        let mut c = json!({"content":{"parts":[{"text":text}],"role":"model"},"index":0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        data(
            &json!({"candidates":[c],"usageMetadata":{"promptTokenCount":prompt,"candidatesTokenCount":cand,"thoughtsTokenCount":thoughts,"totalTokenCount":prompt+cand+thoughts},"modelVersion":"gemini-2.5-flash"}),
        )
    };
    let events = vec![chunk("Hello", None, 8, 2, 5), chunk(" world.", Some("STOP"), 8, 12, 5)];
    let served = events.clone();
    let origin = RawOrigin::start(move |_| sse_response(&served)).await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_tokens = 1000", "")).await;
    let body: Value = serde_json::from_str(&crate::support::gemini::request_body("Say hello")).unwrap();
    let reply = post(&vg, ALICE, "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let r = last_request(&vg, "alice").await;
    assert_eq!((r["input_tokens"].as_u64(), r["output_tokens"].as_u64()), (Some(8), Some(17)), "{r}");
    assert_eq!((r["model"].as_str(), r["estimated"].as_bool()), (Some("gemini-2.5-flash"), Some(false)));
    assert!((r["cost_usd"].as_f64().unwrap() - (8.0 * 0.30 + 17.0 * 2.50) / 1e6).abs() < 1e-12);
}

#[tokio::test]
async fn limits_refuse_with_429_and_nothing_reaches_the_origin() {
    let origin =
        RawOrigin::json(r#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":60,"completion_tokens":40}}"#).await;
    let ask = json!({"model": "gpt-4o-mini", "max_tokens": 10});
    for (limits, allowed, name) in [
        ("monthly_requests = 2", 2, "monthly_requests"),
        ("monthly_tokens = 150", 2, "monthly_tokens"),
        ("requests_per_minute = 3", 3, "requests_per_minute"),
        ("tokens_per_minute = 250", 3, "tokens_per_minute"),
        // 100 tokens at 0.15/0.60 per million: 0.000033 a request.
        ("monthly_cost_usd = 0.00005", 2, "monthly_cost_usd"),
    ] {
        let before = origin.requests().len();
        let vg = Veilgate::start(&config(origin.addr, limits, "")).await;
        for i in 0..allowed {
            let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &ask).await;
            assert_eq!(reply.status, 200, "{limits}: request {i}: {}", reply.text());
        }
        let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &ask).await;
        let v = reply.assert_proxy_error(429);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(reply.header("x-veilgate-limit"), Some(name), "{limits}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(name) && message.contains("resets at"), "{message}");
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        if name.ends_with("per_minute") {
            assert!((1..=60).contains(&retry), "{retry}");
        } else {
            assert!(retry > 60, "a month's reset: {retry}");
        }
        assert_eq!(origin.requests().len() - before, allowed, "{limits}: the refused request never left");
        // Bob has no limits; the refusal is in the metrics, not in /usage.
        assert_eq!(post(&vg, BOB, "/openai/v1/chat/completions", &ask).await.status, 200);
        let alice = usage(&vg, ALICE, "").await.json()["data"][0].clone();
        assert_eq!(alice["requests"], allowed as u64, "{limits}");
        let metrics = send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await;
        let line = format!("veilgate_limit_refusals_total{{client=\"alice\",limit=\"{name}\"}} 1");
        assert!(metrics.text().contains(&line), "{}", metrics.text());
    }
}

#[tokio::test]
async fn with_one_request_left_exactly_one_of_fifty_goes_through() {
    let origin = RawOrigin::json(r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#).await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_requests = 1", "")).await;
    let ask = json!({"model": "gpt-4o-mini"});
    let replies =
        futures_util::future::join_all((0..50).map(|_| post(&vg, ALICE, "/openai/v1/chat/completions", &ask))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!((ok, refused), (1, 49));
    assert_eq!(origin.requests().len(), 1, "exactly one reached the origin");
}

#[tokio::test]
async fn prices_caps_and_bodies_that_are_not_json() {
    let origin =
        RawOrigin::json(r#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":10,"completion_tokens":10}}"#).await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_cost_usd = 1.0\nmonthly_tokens = 1000", "")).await;
    // No price for this model, and alice has a cost limit: 403, never sent.
    let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &json!({"model": "o9-unknown"})).await;
    let v = reply.assert_proxy_error(403);
    assert!(v["error"]["message"].as_str().unwrap().contains("o9-unknown"));
    assert!(origin.requests().is_empty());
    // Bob has no cost limit: fine.
    assert_eq!(post(&vg, BOB, "/openai/v1/chat/completions", &json!({"model": "o9-unknown"})).await.status, 200);
    // An absurd max_tokens is capped at what is left, not refused.
    let huge = json!({"model": "gpt-4o-mini", "max_tokens": 1_000_000_000_000_u64});
    assert_eq!(post(&vg, ALICE, "/openai/v1/chat/completions", &huge).await.status, 200);
    // A body that is not JSON names no model: forwarded, and counted by the
    // answer's usage and its model's price.
    let headers = [("x-veilgate-token", ALICE), ("content-type", "application/json")];
    let reply = send(vg.addr, "POST", "/openai/v1/chat/completions", &headers, b"\xff{not json").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.requests().last().unwrap().body, b"\xff{not json");
    let r = last_request(&vg, "alice").await;
    assert_eq!((r["input_tokens"].as_u64(), r["model"].as_str()), (Some(10), Some("gpt-4o-mini")));
    assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
    // Listing models under a cost limit is not refused, and a list is not
    // taken for answer text.
    let models = RawOrigin::json(
        r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"},{"id":"gpt-4o","object":"model"}]}"#,
    )
    .await;
    let vg = Veilgate::start(&config(models.addr, "monthly_cost_usd = 1.0", "")).await;
    let reply = send(vg.addr, "GET", "/openai/v1/models", &[("x-veilgate-token", ALICE)], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let r = last_request(&vg, "alice").await;
    assert_eq!(
        (r["input_tokens"].as_u64(), r["output_tokens"].as_u64(), r["estimated"].as_bool()),
        (Some(0), Some(0), Some(true))
    );
    // unpriced = "free"
    let vg = Veilgate::start(&config(origin.addr, "monthly_cost_usd = 1.0", "[usage]\nunpriced = \"free\"\n")).await;
    assert_eq!(post(&vg, ALICE, "/openai/v1/chat/completions", &json!({"model": "o9-unknown"})).await.status, 200);
}

#[tokio::test]
async fn failed_attempts_are_requests_without_tokens() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_vec()
    })
    .await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_requests = 10", "")).await;
    let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &json!({"model": "gpt-4o-mini"})).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("x-veilgate-client"), Some("alice"));
    let r = last_request(&vg, "alice").await;
    assert_eq!(
        (r["status"].as_u64(), r["input_tokens"].as_u64(), r["output_tokens"].as_u64()),
        (Some(500), Some(0), Some(0))
    );
    // An origin that is not there: 502, also a request.
    let (_gone_held, gone) = crate::support::refused_addr();
    let vg = Veilgate::start(&config(gone, "", "")).await;
    assert_eq!(post(&vg, ALICE, "/openai/v1/chat/completions", &json!({})).await.status, 502);
    let r = last_request(&vg, "alice").await;
    assert_eq!((r["status"].as_u64(), r["output_tokens"].as_u64()), (Some(502), Some(0)));
}

#[tokio::test]
async fn usage_for_clients_and_the_admin() {
    let origin = RawOrigin::json(r#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":10,"completion_tokens":5}}"#).await;
    let vg =
        Veilgate::start(&config(origin.addr, "monthly_requests = 100", "[usage]\ncost_headers = \"aiproxy\"\n")).await;
    let ask = json!({"model": "gpt-4o-mini"});
    let reply = post(&vg, ALICE, "/openai/v1/chat/completions", &ask).await;
    assert_eq!(reply.header("monthlyrequests"), Some("1"));
    assert_eq!(reply.header("cost"), Some("0.0000045"));
    assert_eq!(reply.header("monthlycost"), Some("0.0000045"));
    assert!(reply.header("x-veilgate-monthly-requests").is_none(), "aiproxy's names instead");
    for _ in 0..2 {
        post(&vg, BOB, "/openai/v1/chat/completions", &ask).await;
    }

    // A client sees itself only.
    let mine = usage(&vg, ALICE, "").await.json();
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    let a = &mine["data"][0];
    assert_eq!(
        (a["client"].as_str(), a["requests"].as_u64(), a["input_tokens"].as_u64()),
        (Some("alice"), Some(1), Some(10))
    );
    assert_eq!(a["limits"], json!({"monthly_requests": 100}));
    assert_eq!(a["by_model"][0]["model"], "gpt-4o-mini");
    assert_eq!(a["by_day"].as_array().unwrap().len(), 1);
    assert_eq!(mine["month"].as_str().unwrap().len(), 7);
    let header = send(vg.addr, "GET", "/usage", &[("x-veilgate-token", ALICE)], b"").await;
    assert_eq!(header.json()["data"][0]["client"], "alice");
    usage(&vg, ALICE, "?client=bob").await.assert_proxy_error(403);
    send(vg.addr, "GET", "/usage", &[], b"").await.assert_proxy_error(401);
    usage(&vg, "carol_token_0123456789abcd", "").await.assert_proxy_error(401);
    usage(&vg, TOKEN, "?month=2026-13").await.assert_proxy_error(400);
    let theirs = usage(&vg, ALICE, "/requests").await.json();
    assert!(theirs["data"].as_array().unwrap().iter().all(|r| r["client"] == "alice"));

    // The admin sees everyone, sorted and paged as aiproxy's API.
    let all = usage(&vg, TOKEN, "?sort=requests").await.json();
    let names: Vec<&str> = all["data"].as_array().unwrap().iter().map(|c| c["client"].as_str().unwrap()).collect();
    assert_eq!(names, ["bob", "alice"]);
    let page = usage(&vg, TOKEN, "?sort=requests&skip=1&limit=1").await.json();
    assert_eq!(page["data"][0]["client"], "alice");
    assert_eq!(usage(&vg, TOKEN, "?client=bob").await.json()["data"][0]["requests"], 2);
    assert_eq!(usage(&vg, TOKEN, "?month=2001-01").await.json()["data"][0]["requests"], 0, "listed, nothing used");
    let requests = usage(&vg, TOKEN, "/requests?limit=2").await.json();
    assert_eq!(requests["data"].as_array().unwrap().len(), 2);
    assert_eq!(requests["data"][0]["client"], "bob", "newest first");

    let metrics = send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await.text();
    for line in [
        "veilgate_client_requests_total{client=\"bob\",status=\"200\"} 2",
        "veilgate_client_tokens_total{client=\"alice\",kind=\"input\"} 10",
        "veilgate_client_cost_usd_total{client=\"alice\"} 0.0000045",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(!metrics.contains(ALICE) && !metrics.contains(BOB));
}

/// Runs `veilgate usage` on `config` and returns its stdout.
fn usage_cli(config: &std::path::Path, month: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_veilgate"));
    cmd.arg("--config").arg(config).arg("usage");
    if let Some(m) = month {
        cmd.args(["--month", m]);
    }
    let out = cmd.output().expect("run veilgate usage");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn requests_of(table: &str, client: &str) -> Option<u64> {
    table.lines().find(|l| l.split_whitespace().next() == Some(client))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn totals_and_limits_survive_a_restart_and_a_crash() {
    use crate::support::binary;
    let origin = RawOrigin::json(r#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":10,"completion_tokens":5}}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nauth_token = \"{TOKEN}\"\ndata_dir = {:?}\n{}",
        dir.path().join("state"),
        config(origin.addr, "monthly_requests = 4", "")
    );
    let config_file = dir.path().join("veilgate.toml");
    std::fs::write(&config_file, &config).unwrap();
    let ask = json!({"model": "gpt-4o-mini"});
    let chat = |addr: SocketAddr| {
        let body = ask.to_string();
        async move {
            let headers = [("x-veilgate-token", ALICE), ("content-type", "application/json")];
            send(addr, "POST", "/openai/v1/chat/completions", &headers, body.as_bytes()).await.status
        }
    };

    let mut first = binary::start(&config, &[]).await;
    assert_eq!(chat(first.addr).await, 200);
    assert_eq!(chat(first.addr).await, 200);
    // A second veilgate on the same data_dir is refused.
    let second =
        std::process::Command::new(env!("CARGO_BIN_EXE_veilgate")).arg("--config").arg(&config_file).output().unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another veilgate is running"), "{said}");
    // The file is readable while the server runs (what is committed so far).
    assert!(usage_cli(&config_file, None).starts_with("client"));
    let pid = first.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(first.child.wait().await.unwrap().success());
    let table = usage_cli(&config_file, None);
    assert_eq!(requests_of(&table, "alice"), Some(2), "SIGTERM commits everything: {table}");
    assert!(usage_cli(&config_file, Some("2001-01")).contains("no requests"));

    // Restarted: the totals are there; one more request, then a crash.
    let mut again = binary::start(&config, &[]).await;
    let alice = usage(&Veilgate::at(again.addr), ALICE, "").await.json()["data"][0].clone();
    assert_eq!((alice["requests"].as_u64(), alice["input_tokens"].as_u64()), (Some(2), Some(20)));
    assert_eq!(chat(again.addr).await, 200);
    // /usage/requests answers once everything settled is committed.
    assert_eq!(
        usage(&Veilgate::at(again.addr), TOKEN, "/requests?client=alice").await.json()["data"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    again.child.start_kill().unwrap();
    again.child.wait().await.unwrap();

    // After SIGKILL: nothing committed was lost, and the limit holds.
    let last = binary::start(&config, &[]).await;
    assert_eq!(chat(last.addr).await, 200, "the 4th of 4");
    assert_eq!(chat(last.addr).await, 429, "the limit survived the restarts");
    assert_eq!(origin.requests().len(), 4);
}

#[tokio::test]
async fn signed_tokens_have_the_jwt_limits() {
    let origin = RawOrigin::json(r#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":1,"completion_tokens":1}}"#).await;
    let vg = Veilgate::start(&format!(
        "{}[auth]\njwt_hs256_secret = \"jwt-secret-0123456789\"\n[auth.jwt_limits]\nmonthly_requests = 1\n",
        preset_at("openai", origin.addr)
    ))
    .await;
    let token = crate::clients::jwt(
        b"jwt-secret-0123456789",
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"email":"dana@team.example"}"#,
    );
    let ask = json!({"model": "gpt-4o-mini"});
    let reply = post(&vg, &token, "/openai/v1/chat/completions", &ask).await;
    assert_eq!((reply.status, reply.header("x-veilgate-client")), (200, Some("dana@team.example")));
    post(&vg, &token, "/openai/v1/chat/completions", &ask).await.assert_proxy_error(429);
    let mine = usage(&vg, &token, "").await.json();
    assert_eq!(mine["data"][0]["limits"], json!({"monthly_requests": 1}));
    assert_eq!(mine["data"][0]["requests"], 1);
    assert_eq!(origin.requests().len(), 1);
}

/// An origin that answers as OpenAI (a chat stream, the usage chunk only
/// when asked), Anthropic (a message) and Gemini (a stream) do.
pub(crate) async fn three_providers() -> RawOrigin {
    RawOrigin::start(|req| {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let target = req.target().to_owned();
        if target.starts_with("/v1/chat/completions") {
            let chunk = |content: &str| data(&json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]}));
            let stop = data(&json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}));
            let mut events = vec![chunk("Hello "), chunk("from OpenAI"), stop];
            if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
                events.push(data(&json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}})));
            }
            events.push("data: [DONE]\n\n".into());
            sse_response(&events)
        } else if target.starts_with("/v1/messages") {
            let m = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello from Claude"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":7,"output_tokens":5,"cache_read_input_tokens":2}}"#;
            crate::support::origin::json_response(m)
        } else {
            let part = |text: &str, finish: bool, cand: u64| {
                let mut c = json!({"content":{"parts":[{"text":text}],"role":"model"},"index":0});
                if finish {
                    c["finishReason"] = json!("STOP");
                }
                data(&json!({"candidates":[c],"usageMetadata":{"promptTokenCount":6,"candidatesTokenCount":cand,"thoughtsTokenCount":3},"modelVersion":"gemini-2.5-pro"}))
            };
            sse_response(&[part("Hello ", false, 1), part("from Gemini", true, 4)])
        }
    })
    .await
}

#[tokio::test]
async fn the_three_sdks_as_a_client_are_counted() {
    use crate::sdk::python_has;
    if !python_has("openai") || !python_has("anthropic") || !python_has("google.genai") {
        return;
    }
    const SDK_TOKEN: &str = "sdk_client_token_0123456789";
    let origin = three_providers().await;
    let vg = Veilgate::start(&format!(
        "{}{}{}[[clients]]\nname = \"sdk\"\ntoken = \"{SDK_TOKEN}\"\n[clients.limits]\nmonthly_tokens = 100000\n",
        preset_at("openai", origin.addr),
        preset_at("claude", origin.addr),
        preset_at("gemini", origin.addr),
    ))
    .await;
    let run = |script: &'static str, base: String| crate::sdk::run_script(script, base, SDK_TOKEN);
    let openai = run("openai_stream.py", format!("{}/openai/v1", vg.url())).await;
    assert_eq!(openai, "Hello from OpenAI\n0\n", "the SDK never sees veilgate's usage chunk");
    let claude = run("anthropic_messages.py", format!("{}/claude", vg.url())).await;
    assert_eq!(claude.trim(), "Hello from Claude");
    let gemini = run("genai_stream.py", format!("{}/gemini", vg.url())).await;
    assert_eq!(gemini.trim(), "Hello from Gemini");

    let mine = usage(&vg, SDK_TOKEN, "").await.json()["data"][0].clone();
    assert_eq!((mine["requests"].as_u64(), mine["estimated_requests"].as_u64()), (Some(3), Some(0)), "{mine}");
    let by_model: Vec<(String, u64, u64)> = mine["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap().to_owned(),
                m["input_tokens"].as_u64().unwrap(),
                m["output_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_model,
        [("claude-sonnet-4-5".into(), 9, 5), ("gemini-2.5-pro".into(), 6, 7), ("gpt-4o-mini".into(), 9, 4)],
        "Anthropic's cache reads are input; Gemini's thoughts are output"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_is_charged_for_what_arrived() {
    use std::sync::Arc;
    use tokio::sync::{Notify, Semaphore};
    let more = Arc::new(Semaphore::new(0));
    let closed = Arc::new(Notify::new());
    let (m, c) = (Arc::clone(&more), Arc::clone(&closed));
    let events = anthropic_events();
    let origin = RawOrigin::scripted(move |_| {
        let mut head = sse_response(&events[..3]);
        head.truncate(head.len() - 5);
        let later = format!("{:x}\r\n{}\r\n", events[3].len(), events[3]);
        vec![Step::Write(head), Step::Wait(Arc::clone(&m)), Step::text(&later), Step::AwaitClose(Arc::clone(&c))]
    })
    .await;
    let vg = Veilgate::start(&config(origin.addr, "monthly_requests = 5", "")).await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true}).to_string();
    let headers = [("x-veilgate-token", ALICE), ("content-type", "application/json")];
    let mut stream =
        crate::support::client::open_with_body(vg.addr, "POST", "/claude/v1/messages", &headers, body.as_bytes()).await;
    let first = stream.read_until(b"\n\n").await.unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    stream.read_until(b"\n\n").await.unwrap();
    stream.read_until(b"\n\n").await.unwrap();
    stream.reset();
    more.add_permits(1);
    // veilgate's write to the gone client fails; the upstream request ends.
    closed.notified().await;
    let r = last_request(&vg, "alice").await;
    assert_eq!((r["estimated"].as_bool(), r["input_tokens"].as_u64()), (Some(true), Some(40)), "{r}");
    assert!(r["output_tokens"].as_u64().unwrap() >= 5, "what arrived is charged: {r}");
    assert_eq!(r["status"], 200);
}
