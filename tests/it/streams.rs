//! OpenAI chat-completions streams that are never cut off (SPEC §14)
//! against scripted loopback SSE origins: cut, reset, stall, a normal
//! finish without `[DONE]`, a tool call cut mid-arguments, prefill
//! accepted and refused, a continuation that repeats a tail — read by a
//! raw SSE reader and by the OpenAI SDK.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::Veilgate;
use crate::support::client::send;
use crate::support::origin::{Captured, RawOrigin, Step};

const HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";
const ASK: &[u8] = br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Tell me a story"}]}"#;

fn chunk(id: &str, text: &str) -> String {
    let v = json!({"id": id, "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

fn role(id: &str) -> String {
    let v = json!({"id": id, "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

fn finish(id: &str, reason: &str) -> String {
    let v = json!({"id": id, "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]});
    format!("data: {v}\n\n")
}

fn usage(id: &str, prompt: u64, completion: u64) -> String {
    let v = json!({"id": id, "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
    format!("data: {v}\n\n")
}

/// An origin whose `n`-th request (from 0) is answered by `script(n, request)`.
async fn origin(script: impl Fn(usize, &Captured) -> Vec<Step> + Send + Sync + 'static) -> RawOrigin {
    let n = AtomicUsize::new(0);
    RawOrigin::scripted(move |c| script(n.fetch_add(1, Ordering::SeqCst), c)).await
}

fn preset(origin: &RawOrigin, extra: &str) -> String {
    format!(
        "[continuation]\nmax_retries = 2\nretry_delay_ms = 10\nstream_idle_timeout_ms = 400\n\
         [presets.api]\ntargets = [\"http://{}\"]\nprotocol = \"openai\"\ncontinue_streams = true\n{extra}",
        origin.addr
    )
}

/// The JSON events of a stream, and whether it ended with `[DONE]`.
fn parse(text: &str) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut done = 0;
    for block in text.split("\n\n") {
        for line in block.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    done += 1;
                } else if let Ok(v) = serde_json::from_str(data) {
                    out.push(v);
                }
            }
        }
    }
    (out, done)
}

fn text_of(events: &[Value]) -> String {
    events.iter().filter_map(|v| v.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect()
}

fn body_json(c: &Captured) -> Value {
    serde_json::from_slice(&c.body).unwrap()
}

#[tokio::test]
async fn a_cut_stream_is_continued_and_stitched_into_one() {
    let api = origin(|n, _| match n {
        // Cut after "Once upon a time, " — the connection simply closes.
        0 => vec![
            Step::text(HEAD),
            Step::text(&(role("a") + &chunk("a", "Once upon a time, ") + &chunk("a", "there was a fox"))),
            Step::Close,
        ],
        // The continuation repeats a tail and goes on.
        _ => vec![
            Step::text(HEAD),
            Step::text(&(role("b") + &chunk("b", "there was a fox") + &chunk("b", " who loved code."))),
            Step::text(&(finish("b", "stop") + &usage("b", 40, 12) + "data: [DONE]\n\n")),
            Step::Close,
        ],
    })
    .await;
    let vg = Veilgate::start(&preset(&api, "")).await;
    let r = send(vg.addr, "POST", "/api/v1/chat/completions", &[("content-type", "application/json")], ASK).await;
    assert_eq!(r.status, 200);
    let (events, done) = parse(&r.text());
    assert_eq!(text_of(&events), "Once upon a time, there was a fox who loved code.", "{}", r.text());
    assert_eq!(done, 1, "[DONE] exactly once");
    assert!(events.iter().all(|e| e["id"] == "a"), "the first stream's id throughout");
    assert_eq!(events.iter().filter(|e| e.pointer("/choices/0/delta/role").is_some()).count(), 1);
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    let cont = body_json(&seen[1]);
    let messages = cont["messages"].as_array().unwrap();
    assert_eq!(messages[1], json!({"role": "assistant", "content": "Once upon a time, there was a fox"}));
    assert_eq!(messages[2]["role"], "user", "the continuation prompt (no prefill on this preset)");
    assert!(messages[2]["content"].as_str().unwrap().len() > 10);
    // The cut attempt had no usage: its estimate is added to the final one.
    let u = events.iter().find_map(|e| e.get("usage").filter(|u| u.is_object())).unwrap();
    assert!(u["prompt_tokens"].as_u64().unwrap() > 40 && u["completion_tokens"].as_u64().unwrap() > 12, "{u}");
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_reset_or_a_stall_is_continued_and_a_finish_without_done_is_completed() {
    let api = origin(|n, _| match n {
        0 => vec![Step::text(HEAD), Step::text(&chunk("a", "Alpha ")), Step::Reset],
        1 => vec![Step::text(HEAD), Step::text(&chunk("b", "beta ")), Step::Hang],
        // Finished, then closed without [DONE].
        _ => vec![Step::text(HEAD), Step::text(&(chunk("c", "gamma.") + &finish("c", "length"))), Step::Close],
    })
    .await;
    let vg = Veilgate::start(&preset(&api, "")).await;
    let r = send(vg.addr, "POST", "/api/v1/chat/completions", &[], ASK).await;
    let (events, done) = parse(&r.text());
    assert_eq!(text_of(&events), "Alpha beta gamma.", "{}", r.text());
    assert_eq!(done, 1, "added after the normal finish");
    assert_eq!(api.requests().len(), 3);
    assert_eq!(body_json(&api.requests()[2])["messages"][1]["content"], "Alpha beta ");
}

#[tokio::test]
async fn a_tool_call_cut_mid_arguments_and_a_stream_past_max_retries_end_in_an_error_never_done() {
    let tool = "data: {\"id\":\"t\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"{\\\"ci\"}}]},\"finish_reason\":null}]}\n\n";
    let calls = origin(move |_, _| vec![Step::text(HEAD), Step::text(tool), Step::Close]).await;
    let vg = Veilgate::start(&preset(&calls, "")).await;
    let r = send(vg.addr, "POST", "/api/v1/chat/completions", &[], ASK).await;
    let (events, done) = parse(&r.text());
    assert_eq!(done, 0, "never complete-looking");
    assert_eq!(events.last().unwrap()["error"]["code"], "stream_interrupted", "{}", r.text());
    assert_eq!(calls.requests().len(), 1, "a tool call is never half-issued twice");

    let cut = origin(|n, _| vec![Step::text(HEAD), Step::text(&chunk("x", &format!("part{n} "))), Step::Close]).await;
    let vg = Veilgate::start(&preset(&cut, "")).await;
    let r = send(vg.addr, "POST", "/api/v1/chat/completions", &[], ASK).await;
    let (events, done) = parse(&r.text());
    assert_eq!(done, 0);
    let last = events.last().unwrap();
    assert_eq!(
        (last["error"]["type"].as_str(), last["error"]["code"].as_str()),
        (Some("server_error"), Some("stream_interrupted"))
    );
    assert_eq!(cut.requests().len(), 3, "the first attempt and max_retries = 2 continuations");
    assert_eq!(text_of(&events), "part0 part1 part2 ");
}

#[tokio::test]
async fn prefill_is_used_where_the_target_takes_it_and_a_refused_prefill_falls_back_to_the_prompt() {
    let api = origin(|n, c| {
        let body = body_json(c);
        let messages = body["messages"].as_array().unwrap();
        let ends_with_assistant = messages.last().unwrap()["role"] == "assistant";
        match n {
            0 => vec![Step::text(HEAD), Step::text(&chunk("a", "Red, green")), Step::Close],
            // The prefill form is refused…
            1 if ends_with_assistant => vec![Step::text(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n{\"error\":{\"message\":\"no\"}}",
            )],
            // …the prompt form goes on.
            _ => vec![Step::text(HEAD), Step::text(&(chunk("b", ", blue.") + &finish("b", "stop") + "data: [DONE]\n\n")), Step::Close],
        }
    })
    .await;
    let vg = Veilgate::start(&preset(&api, "prefill = true\n")).await;
    let r = send(vg.addr, "POST", "/api/v1/chat/completions", &[], ASK).await;
    let (events, done) = parse(&r.text());
    assert_eq!((text_of(&events), done), ("Red, green, blue.".to_owned(), 1), "{}", r.text());
    assert!(events.iter().all(|e| e.get("error").is_none()), "the prefill's 400 never reaches the client");
    let seen = api.requests();
    assert_eq!(seen.len(), 3);
    let prefill = body_json(&seen[1]);
    assert_eq!(
        prefill["messages"].as_array().unwrap().last().unwrap(),
        &json!({"role":"assistant","content":"Red, green"})
    );
    let prompt = body_json(&seen[2]);
    assert_eq!(prompt["messages"].as_array().unwrap().last().unwrap()["role"], "user");
}

#[tokio::test]
async fn a_stream_cut_at_an_alias_member_is_continued_by_the_next_member() {
    // The first member cuts the stream; the second continues it with its
    // own model, by prefill (its preset's rule); then a cut at the last
    // member is continued on that same target.
    let first =
        origin(|_, _| vec![Step::text(HEAD), Step::text(&(role("a") + &chunk("a", "One, two"))), Step::Close]).await;
    let second = origin(|n, _| match n {
        0 => vec![Step::text(HEAD), Step::text(&chunk("b", ", three")), Step::Reset],
        _ => vec![
            Step::text(HEAD),
            Step::text(&(chunk("c", ", four.") + &finish("c", "stop") + &usage("c", 9, 4) + "data: [DONE]\n\n")),
            Step::Close,
        ],
    })
    .await;
    let vg = Veilgate::start(&format!(
        "[continuation]\nmax_retries = 3\nretry_delay_ms = 10\nstream_idle_timeout_ms = 400\n\
         [presets.one]\ntargets = [\"http://{}\"]\nprotocol = \"openai\"\ncontinue_streams = true\n\
         [presets.two]\ntargets = [\"http://{}\"]\nprotocol = \"openai\"\ncontinue_streams = true\nprefill = true\n\
         [aliases.steady]\nmodels = [\"one/small\", \"two/large\"]\n",
        first.addr, second.addr
    ))
    .await;
    let ask = br#"{"model":"steady","stream":true,"messages":[{"role":"user","content":"Count to four"}]}"#;
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[("content-type", "application/json")], ask).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (events, done) = parse(&r.text());
    assert_eq!((text_of(&events), done), ("One, two, three, four.".to_owned(), 1), "{}", r.text());
    assert!(events.iter().all(|e| e["id"] == "a"), "the first stream's id throughout");
    assert_eq!(first.requests().len(), 1, "the cut member is not asked again");
    let seen = second.requests();
    assert_eq!(seen.len(), 2, "the next member, then the same target (no member after it)");
    let cont = body_json(&seen[0]);
    assert_eq!(cont["model"], "large", "the member's own model");
    assert_eq!(
        cont["messages"].as_array().unwrap().last().unwrap(),
        &json!({"role": "assistant", "content": "One, two"}),
        "a prefill: the member's preset has prefill = true"
    );
    let again = body_json(&seen[1]);
    assert_eq!(again["model"], "large");
    assert_eq!(again["messages"].as_array().unwrap().last().unwrap()["content"], "One, two, three");
}

#[tokio::test]
async fn the_openai_sdk_sees_one_ordinary_stream() {
    if !crate::sdk::python_has("openai") {
        return;
    }
    let api = origin(|n, _| match n {
        0 => vec![
            Step::text(HEAD),
            Step::text(&(role("a") + &chunk("a", "Hello, "))),
            Step::Sleep(Duration::from_millis(50)),
            Step::Reset,
        ],
        _ => vec![
            Step::text(HEAD),
            Step::text(&(role("b") + &chunk("b", "world!") + &finish("b", "stop") + "data: [DONE]\n\n")),
            Step::Close,
        ],
    })
    .await;
    let vg = Veilgate::start(&preset(&api, "")).await;
    let out = crate::sdk::run_script("openai_stream.py", format!("{}/api/v1", vg.url()), "").await;
    assert_eq!(out.lines().next(), Some("Hello, world!"), "{out}");
    assert_eq!(api.requests().len(), 2);
}

fn anthropic(v: Value) -> String {
    format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())
}

fn msg_start(id: &str) -> String {
    anthropic(json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","content":[],
        "model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}))
}

fn text_block(i: u64) -> String {
    anthropic(json!({"type":"content_block_start","index":i,"content_block":{"type":"text","text":""}}))
}

fn text_delta(i: u64, t: &str) -> String {
    anthropic(json!({"type":"content_block_delta","index":i,"delta":{"type":"text_delta","text":t}}))
}

fn anthropic_end(out: u64) -> String {
    anthropic(json!({"type":"content_block_stop","index":0}))
        + &anthropic(
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":out}}),
        )
        + &anthropic(json!({"type":"message_stop"}))
}

#[tokio::test]
async fn an_anthropic_stream_cut_by_an_overloaded_error_is_continued_by_prefill() {
    let overloaded = anthropic(json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}));
    let api = origin(move |n, _| match n {
        0 => vec![
            Step::text(HEAD),
            Step::text(&(msg_start("msg_a") + &text_block(0) + &text_delta(0, "The sea is ") + &text_delta(0, "grey"))),
            Step::text(&overloaded),
            Step::Close,
        ],
        _ => vec![
            Step::text(HEAD),
            Step::text(&(msg_start("msg_b") + &text_block(0) + &text_delta(0, " and wide."))),
            Step::text(&anthropic_end(5)),
            Step::Close,
        ],
    })
    .await;
    let vg = Veilgate::start(&format!(
        "[continuation]\nmax_retries = 2\nretry_delay_ms = 10\n\
         [presets.claudeish]\ntargets = [\"http://{}\"]\nprotocol = \"anthropic\"\ncontinue_streams = true\nprefill = true\n",
        api.addr
    ))
    .await;
    let ask = br#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"a line"}]}"#;
    let r = send(vg.addr, "POST", "/claudeish/v1/messages", &[], ask).await;
    let text = r.text();
    let datas: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect();
    let said: String = datas.iter().filter_map(|v| v.pointer("/delta/text").and_then(Value::as_str)).collect();
    assert_eq!(said, "The sea is grey and wide.", "{text}");
    let count = |t: &str| datas.iter().filter(|v| v["type"] == t).count();
    assert_eq!((count("message_start"), count("message_stop"), count("error")), (1, 1, 0), "{text}");
    assert_eq!(count("content_block_start"), 1, "the cut block went on");
    let prefill: Value = serde_json::from_slice(&api.requests()[1].body).unwrap();
    assert_eq!(prefill["messages"][1], json!({"role":"assistant","content":"The sea is grey"}), "a prefill, no prompt");
    assert_eq!(prefill["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_anthropic_sdk_sees_one_ordinary_stream() {
    if !crate::sdk::python_has("anthropic") {
        return;
    }
    let api = origin(|n, _| match n {
        0 => vec![
            Step::text(HEAD),
            Step::text(&(msg_start("msg_a") + &text_block(0) + &text_delta(0, "Stars are "))),
            Step::Reset,
        ],
        _ => vec![
            Step::text(HEAD),
            Step::text(&(msg_start("msg_b") + &text_block(0) + &text_delta(0, "Stars are bright tonight."))),
            Step::text(&anthropic_end(7)),
            Step::Close,
        ],
    })
    .await;
    let vg = Veilgate::start(&format!(
        "[continuation]\nretry_delay_ms = 10\n\
         [presets.claudeish]\ntargets = [\"http://{}\"]\nprotocol = \"anthropic\"\ncontinue_streams = true\n",
        api.addr
    ))
    .await;
    let out = crate::sdk::run_script("anthropic_stream.py", format!("{}/claudeish", vg.url()), "").await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("Stars are bright tonight."), "a restart cut: {out}");
    let last = lines.next().unwrap();
    assert!(last.starts_with("end_turn "), "{last}");
    let tokens: u64 = last.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(tokens > 7, "usage summed with the cut attempt's estimate: {tokens}");
}
