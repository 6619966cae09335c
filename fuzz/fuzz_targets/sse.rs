//! The SSE parser on arbitrary bytes, fed in arbitrary splits: it never
//! panics, and the raw bytes of the items it returns are a prefix of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate::monitor::sse::{Item, SseParser};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let step = usize::from(split).max(1);
    let mut p = SseParser::new(1 << 16);
    let mut out = Vec::new();
    for piece in input.chunks(step) {
        p.push(piece);
        loop {
            match p.next_item() {
                Ok(Some(Item::Event(e))) => out.extend_from_slice(&e.raw),
                Ok(Some(Item::Other(raw))) => out.extend_from_slice(&raw),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(input.starts_with(&out));
});
