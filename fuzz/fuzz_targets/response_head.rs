//! The response-head parser and framing on arbitrary bytes: never panics,
//! and every prefix of the input either needs more bytes or gives the same
//! answer as the whole input (an error, or the same head with the same
//! bytes left over).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use veilgate::upstream::parse::parse_head;

const LIMIT: usize = 8192;

/// What parsing `bytes` gave: an error, need-more, or the head's parts and
/// the bytes left after it.
#[derive(Debug, PartialEq)]
enum Parsed {
    Invalid,
    NeedMore,
    Head { status: u16, version: http::Version, headers: http::HeaderMap, rest: Vec<u8> },
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut buf = BytesMut::from(bytes);
    match parse_head(&mut buf, LIMIT) {
        Err(_) => Parsed::Invalid,
        Ok(None) => Parsed::NeedMore,
        Ok(Some(head)) => {
            let _ = head.framing(&http::Method::GET);
            let _ = head.framing(&http::Method::HEAD);
            let _ = head.is_keep_alive();
            let _ = head.is_interim();
            let _ = head.wire_len();
            Parsed::Head { status: head.status.as_u16(), version: head.version, headers: head.headers, rest: buf.to_vec() }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    // At most 64 cuts, spread over the input.
    let step = (data.len() / 64).max(1);
    for cut in (0..data.len()).step_by(step) {
        match (parse(&data[..cut]), &whole) {
            (Parsed::NeedMore, _) => {}
            (Parsed::Invalid, Parsed::Invalid) => {}
            (Parsed::Head { status, version, headers, rest }, Parsed::Head { rest: whole_rest, .. }) => {
                let same = Parsed::Head { status, version, headers, rest: whole_rest.clone() };
                assert_eq!(&same, &whole, "prefix of {cut} bytes parsed differently");
                assert!(whole_rest.starts_with(&rest), "prefix of {cut} bytes left other bytes over");
            }
            (part, _) => panic!("prefix of {cut} bytes gave {part:?}, the whole input {whole:?}"),
        }
    }
});
