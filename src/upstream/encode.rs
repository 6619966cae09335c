//! Sans-IO encoding of the request head the socket transport writes. Every
//! byte that leaves veilgate for an upstream is decided here: the request
//! line, `host`, the policy's end-to-end headers in order, and the framing.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Writes `METHOD path HTTP/1.1`, `host`, the headers, and
/// `content-length` for a non-empty body or a POST/PUT/PATCH.
///
/// `path` is the path-and-query exactly as routing produced it; routing
/// has already refused raw spaces and control bytes, and `HeaderValue`
/// cannot hold CR or LF, so no input can split the head.
pub(crate) fn encode_head(
    method: &Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    credential: Option<(&HeaderName, &HeaderValue)>,
    body_len: usize,
    out: &mut BytesMut,
) {
    let mut len = method.as_str().len() + path.len() + host.len() + 40;
    for (k, v) in headers.iter().chain(credential) {
        len += k.as_str().len() + v.len() + 4;
    }
    out.reserve(len);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(host.as_bytes());
    out.put_slice(b"\r\n");
    for (k, v) in headers.iter().chain(credential) {
        out.put_slice(k.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(v.as_bytes());
        out.put_slice(b"\r\n");
    }
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.put_slice(b"content-length: ");
        out.put_slice(body_len.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes() {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("accept"), HeaderValue::from_static("*/*"));
        h.insert(HeaderName::from_static("authorization"), HeaderValue::from_static("Bearer x"));
        let mut out = BytesMut::new();
        encode_head(&Method::POST, "/v1/a%20b?x=1", "api.example.com", &h, None, 2, &mut out);
        assert_eq!(
            &out[..],
            b"POST /v1/a%20b?x=1 HTTP/1.1\r\nhost: api.example.com\r\naccept: */*\r\n\
              authorization: Bearer x\r\ncontent-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn content_length_only_when_needed() {
        let h = HeaderMap::new();
        for (m, len, has) in [
            (Method::GET, 0, false),
            (Method::HEAD, 0, false),
            (Method::DELETE, 0, false),
            (Method::DELETE, 3, true),
            (Method::POST, 0, true),
            (Method::PUT, 0, true),
            (Method::PATCH, 0, true),
        ] {
            let mut out = BytesMut::new();
            encode_head(&m, "/", "h", &h, None, len, &mut out);
            let text = String::from_utf8(out.to_vec()).unwrap();
            assert_eq!(text.contains("content-length: "), has, "{m} {len}");
        }
    }
}
