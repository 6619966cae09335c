//! Reading usage from answers (SPEC §11) on arbitrary bytes: it never
//! panics, for any protocol, as a stream event or a whole answer; and on a
//! valid JSON object its top-level `usage.prompt_tokens` is what
//! `serde_json` reads there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use veilgate::usage::count::{Counter, Protocol};

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::OpenAi, Protocol::Anthropic, Protocol::Gemini] {
        let mut c = Counter::new(protocol);
        c.feed_json(data);
        c.feed_json(data);
        let _ = c.text_bytes();
        let _ = c.finish();
        let mut c = Counter::new(protocol);
        c.feed_whole(data);
        let _ = c.finish();
    }
    if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(data)
        && let Some(want) = doc.get("usage").and_then(|u| u.get("prompt_tokens")).and_then(Value::as_u64)
    {
        let mut c = Counter::new(Protocol::OpenAi);
        c.feed_whole(data);
        assert_eq!(c.finish().map(|u| u.input_tokens), Some(want));
    }
});
