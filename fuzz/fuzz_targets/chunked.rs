//! The chunked decoder on arbitrary bytes in arbitrary splits: never
//! panics, and the decoded body does not depend on how the input was split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use veilgate::upstream::chunked::BodyDecoder;
use veilgate::upstream::parse::Framing;

fn decode(input: &[u8], step: usize) -> Result<Vec<u8>, ()> {
    let mut d = BodyDecoder::new(Framing::Chunked);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(data) = d.decode(&mut buf).map_err(|_| ())? {
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let whole = decode(input, input.len().max(1));
    let pieces = decode(input, usize::from(split).max(1));
    if let (Ok(a), Ok(b)) = (&whole, &pieces) {
        assert_eq!(a, b);
    }
});
