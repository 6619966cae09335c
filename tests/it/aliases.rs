//! The unified endpoint, aliases and rate limits (SPEC §13) against
//! loopback OpenAI-shaped origins: an alias whose first member fails, a
//! member whose context is too small, one that refuses the content, a
//! member over its rate limit, `GET /v1/models`.

use crate::support::Veilgate;
use crate::support::client::send;
use crate::support::origin::{RawOrigin, Step, json_response};

fn answer(model: &str) -> Vec<u8> {
    json_response(&format!(
        "{{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"model\":\"{model}\",\"choices\":[],\
         \"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}}}"
    ))
}

fn error(status: u16, code: &str) -> Vec<u8> {
    let body = format!("{{\"error\":{{\"message\":\"no\",\"type\":\"invalid_request_error\",\"code\":\"{code}\"}}}}");
    format!("HTTP/1.1 {status} Bad\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

fn model_sent(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["model"].as_str().unwrap().to_owned()
}

const CHAT: &[u8] = br#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;

#[tokio::test]
async fn an_alias_falls_back_across_providers_and_the_answer_names_its_model() {
    let down = RawOrigin::scripted(|_| vec![Step::Write(error(503, "overloaded"))]).await;
    let up = RawOrigin::start(|_| answer("llama-3.3-70b-from-b")).await;
    let vg = Veilgate::start(&format!(
        "[presets.groqish]\ntargets = [\"http://{}\"]\nprotocol = \"openai\"\n\
         [presets.cerebrasish]\ntargets = [\"http://{}/api\"]\nprotocol = \"openai\"\nopenai_path = \"/openai/v1\"\n\
         [aliases.fast]\nmodels = [\"groqish/llama-3.3-70b-versatile\", \"cerebrasish/llama-3.3-70b\"]\n",
        down.addr, up.addr
    ))
    .await;
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[("content-type", "application/json")], CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "llama-3.3-70b-from-b", "the answering member's model, not rewritten");
    let first = down.only_request();
    assert_eq!(first.request_line(), "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(model_sent(&first.body), "llama-3.3-70b-versatile");
    let second = up.only_request();
    assert_eq!(second.request_line(), "POST /api/openai/v1/chat/completions HTTP/1.1", "the preset's openai_path");
    assert_eq!(
        String::from_utf8(second.body.clone()).unwrap(),
        r#"{"model":"llama-3.3-70b","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
        "only the model changed, byte for byte"
    );

    // `<preset>/<model>` goes to that preset alone.
    let direct = br#"{"model":"groqish/llama-3.1-8b","messages":[]}"#;
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[], direct).await;
    assert_eq!(r.status, 503, "one member: its failure as it came");
    assert_eq!(model_sent(&down.requests()[1].body), "llama-3.1-8b");
    assert_eq!(up.requests().len(), 1);

    let nobody = send(vg.addr, "POST", "/v1/chat/completions", &[], br#"{"model":"nope"}"#).await;
    let body = nobody.assert_proxy_error(404);
    assert!(body["error"]["message"].as_str().unwrap().contains("\"nope\""), "{body}");
    send(vg.addr, "POST", "/v1/embeddings", &[], b"not json").await.assert_proxy_error(400);
    assert_eq!(down.requests().len() + up.requests().len(), 3, "refused requests reached nobody");
}

#[tokio::test]
async fn only_context_length_exceeded_moves_an_alias_on_among_the_4xx() {
    let small = RawOrigin::scripted(|c| {
        let step = if model_sent(&c.body) == "small" {
            error(400, "context_length_exceeded")
        } else {
            error(400, "content_filter")
        };
        vec![Step::Write(step)]
    })
    .await;
    let large = RawOrigin::start(|_| answer("large")).await;
    let vg = Veilgate::start(&format!(
        "[presets.a]\ntargets = [\"http://{}\"]\n[presets.b]\ntargets = [\"http://{}\"]\n\
         [aliases.long]\nmodels = [\"a/small\", \"b/large\"]\n\
         [aliases.filtered]\nmodels = [\"a/strict\", \"b/large\"]\n",
        small.addr, large.addr
    ))
    .await;
    let long = br#"{"model":"long","messages":[]}"#;
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[], long).await;
    assert_eq!((r.status, r.json()["model"].clone()), (200, serde_json::json!("large")));
    let filtered = br#"{"model":"filtered","messages":[]}"#;
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[], filtered).await;
    assert_eq!(r.status, 400, "another 4xx is the request's: never the next member");
    assert_eq!(r.json()["error"]["code"], "content_filter", "and it reaches the client as it came");
    assert_eq!(large.requests().len(), 1);
}

#[tokio::test]
async fn rate_limits_refuse_with_retry_after_and_move_an_alias_on() {
    let a = RawOrigin::start(|_| answer("a")).await;
    let b = RawOrigin::start(|_| answer("b")).await;
    let vg = Veilgate::start(&format!(
        "[presets.a]\ntargets = [\"http://{}\"]\nrequests_per_minute = 1\n\
         [presets.b]\ntargets = [\"http://{}\"]\ntokens_per_minute = 1000\n\
         [aliases.any]\nmodels = [\"a/m\", \"b/m\"]\n\
         [aliases.tiny]\nmodels = [\"b/m\"]\nrequests_per_minute = 1\n",
        a.addr, b.addr
    ))
    .await;
    assert_eq!(send(vg.addr, "POST", "/a/v1/chat/completions", &[], b"{}").await.status, 200);
    let r = send(vg.addr, "POST", "/a/v1/chat/completions", &[], b"{}").await;
    let body = r.assert_proxy_error(429);
    assert!(body["error"]["message"].as_str().unwrap().contains("requests_per_minute"), "{body}");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(a.requests().len(), 1, "nothing sent over the limit");

    // The alias's first member is out of requests: the second answers.
    let any = br#"{"model":"any","messages":[]}"#;
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[], any).await;
    assert_eq!((r.status, r.json()["model"].clone()), (200, serde_json::json!("b")));
    // Tokens: b holds 1000; each request asking for 600 output tokens
    // takes about 612 (its size / 4, plus max_tokens).
    let big = br#"{"model":"b/m","max_tokens":600,"messages":[]}"#;
    assert_eq!(send(vg.addr, "POST", "/v1/chat/completions", &[], big).await.status, 200);
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[], big).await;
    assert!(r.assert_proxy_error(429)["error"]["message"].as_str().unwrap().contains("tokens_per_minute"));
    // An alias's own limit.
    let tiny = br#"{"model":"tiny","messages":[]}"#;
    assert_eq!(send(vg.addr, "POST", "/v1/chat/completions", &[], tiny).await.status, 200);
    let r = send(vg.addr, "POST", "/v1/chat/completions", &[], tiny).await;
    assert!(r.assert_proxy_error(429)["error"]["message"].as_str().unwrap().contains("alias tiny"));
    assert_eq!(b.requests().len(), 3);
}

#[tokio::test]
async fn the_model_list_has_the_aliases_then_every_declared_model() {
    let vg = Veilgate::start(
        "[presets.groq]\nmodels = [{ id = \"llama-3.3-70b-versatile\" }]\n\
         [aliases.fast]\nmodels = [\"groq/llama-3.3-70b-versatile\", \"cerebras/llama-3.3-70b\"]\n",
    )
    .await;
    let r = send(vg.addr, "GET", "/v1/models", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"object":"list","data":[
            {"id":"fast","object":"model","owned_by":"veilgate"},
            {"id":"groq/llama-3.3-70b-versatile","object":"model","owned_by":"groq"}
        ]})
    );
    // An alias naming a preset that does not exist is a start-up error.
    let raw = veilgate::config::RawConfig::from_toml("[aliases.x]\nmodels = [\"nowhere/m\"]").unwrap();
    let e = veilgate::config::Config::from_raw(raw, &|_| None).unwrap_err().to_string();
    assert!(e.contains("aliases.x") && e.contains("nowhere"), "{e}");
}

#[tokio::test]
async fn usage_records_every_attempt_and_the_member_that_answered() {
    let down = RawOrigin::scripted(|_| vec![Step::Write(error(503, "overloaded"))]).await;
    let up = RawOrigin::start(|_| answer("m-b-2024")).await;
    let vg = Veilgate::start(&format!(
        "[presets.a]\ntargets = [\"http://{}\"]\nprotocol = \"openai\"\n\
         retry = {{ attempts = 2, on = [503], backoff_ms = 10 }}\n\
         [presets.b]\ntargets = [\"http://{}\"]\nprotocol = \"openai\"\n\
         [aliases.fast]\nmodels = [\"a/m-a\", \"b/m-b\"]\n\
         [[clients]]\nname = \"alice\"\ntoken = \"alice_token_0123456789abcd\"\n",
        down.addr, up.addr
    ))
    .await;
    let headers = [("x-veilgate-token", "alice_token_0123456789abcd")];
    let r = send(vg.addr, "POST", "/v1/chat/completions", &headers, CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(down.requests().len(), 2, "two attempts on the first member");
    let auth = format!("Bearer {}", crate::support::TOKEN);
    let listed = send(vg.addr, "GET", "/usage/requests?client=alice", &[("authorization", &auth)], b"").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let rows: Vec<(String, u64, u64)> = listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["preset"].as_str().unwrap_or("").to_owned(),
                r["status"].as_u64().unwrap(),
                r["output_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut rows = rows;
    rows.sort();
    assert_eq!(rows, [("a".into(), 503, 0), ("a".into(), 503, 0), ("b".into(), 200, 4)], "{}", listed.text());
}
