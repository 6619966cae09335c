//! The chunked decoder on arbitrary bytes in arbitrary splits: never
//! panics, and what it decodes — the bytes, whether it failed, whether the
//! body ended — does not depend on how the input was split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use veilgate::upstream::chunked::BodyDecoder;
use veilgate::upstream::parse::Framing;

/// The bytes decoded, whether decoding failed, and whether the body ended.
fn decode(input: &[u8], step: usize) -> (Vec<u8>, bool, bool) {
    let mut d = BodyDecoder::new(Framing::Chunked);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(data)) => out.extend_from_slice(&data),
                Ok(None) => break,
                Err(_) => return (out, true, false),
            }
        }
        if d.is_done() {
            break;
        }
    }
    let done = d.is_done();
    (out, false, done)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let whole = decode(input, input.len().max(1));
    let pieces = decode(input, usize::from(split).max(1));
    assert_eq!(whole, pieces, "split every {split} bytes");
});
