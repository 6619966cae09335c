//! The DNS answer reader on arbitrary bytes: never panics; a query built
//! from any text that is a name is never read as an answer, and its
//! response form (QR set, no records) has no addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate::dns::wire::{Kind, answers, query};

fuzz_target!(|data: &[u8]| {
    let _ = answers(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(q) = query(text, Kind::Aaaa)
    {
        assert!(answers(&q).is_err(), "a query is not an answer");
        let mut r = q.clone();
        r[2] |= 0x80;
        assert_eq!(answers(&r), Ok(Vec::new()));
    }
});
