//! Sans-IO encoding of the request head the socket transport writes. Every
//! byte that leaves veilgate for an upstream is decided here: the request
//! line, `host`, the policy's end-to-end headers in order, and the framing.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::policy::target::Origin;

/// Bodies up to this size are written in the same write as the head (the
/// caller appends them; [`encode_head`] leaves room for them).
pub(crate) const COALESCE_BODY_BYTES: usize = 16 * 1024;

/// Writes `METHOD path HTTP/1.1`, `host`, the headers, and
/// `content-length` for a non-empty body or a POST/PUT/PATCH.
///
/// `path` is the path-and-query exactly as routing produced it; routing
/// has already refused raw spaces and control bytes, and `HeaderValue`
/// cannot hold CR or LF, so no input can split the head.
pub(crate) fn encode_head(
    method: &Method,
    path: &str,
    origin: &Origin,
    headers: &HeaderMap,
    credential: Option<(&HeaderName, &HeaderValue)>,
    body_len: usize,
    out: &mut BytesMut,
) {
    let mut len = method.as_str().len() + path.len() + origin.host_len_hint() + 40;
    for (k, v) in headers.iter().chain(credential) {
        len += k.as_str().len() + v.len() + 4;
    }
    if body_len <= COALESCE_BODY_BYTES {
        len += body_len;
    }
    out.reserve(len);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    origin.put_host_header(out);
    out.put_slice(b"\r\n");
    for (k, v) in headers.iter().chain(credential) {
        out.put_slice(k.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(v.as_bytes());
        out.put_slice(b"\r\n");
    }
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.put_slice(b"content-length: ");
        crate::decimal::put(out, body_len as u64);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::policy::target::{Host, Scheme};

    #[test]
    fn exact_bytes() {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("accept"), HeaderValue::from_static("*/*"));
        h.insert(HeaderName::from_static("authorization"), HeaderValue::from_static("Bearer x"));
        let mut out = BytesMut::new();
        let api = Origin { scheme: Scheme::Https, host: Host::Name("api.example.com".into()), port: 443 };
        encode_head(&Method::POST, "/v1/a%20b?x=1", &api, &h, None, 2, &mut out);
        assert_eq!(
            &out[..],
            b"POST /v1/a%20b?x=1 HTTP/1.1\r\nhost: api.example.com\r\naccept: */*\r\n\
              authorization: Bearer x\r\ncontent-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn host_has_a_port_only_when_it_is_not_the_default() {
        for (origin, host) in [
            (
                Origin { scheme: Scheme::Http, host: Host::V4(Ipv4Addr::new(127, 0, 0, 1)), port: 8080 },
                "127.0.0.1:8080",
            ),
            (Origin { scheme: Scheme::Http, host: Host::V4(Ipv4Addr::new(10, 200, 0, 9)), port: 80 }, "10.200.0.9"),
            (Origin { scheme: Scheme::Https, host: Host::V6(Ipv6Addr::LOCALHOST), port: 8443 }, "[::1]:8443"),
        ] {
            let mut out = BytesMut::new();
            encode_head(&Method::GET, "/", &origin, &HeaderMap::new(), None, 0, &mut out);
            assert_eq!(String::from_utf8(out.to_vec()).unwrap(), format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n"));
            assert_eq!(origin.host_header(), host);
        }
    }

    #[test]
    fn content_length_only_when_needed() {
        let h = HeaderMap::new();
        let origin = Origin { scheme: Scheme::Http, host: Host::Name("h".into()), port: 80 };
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
            encode_head(&m, "/", &origin, &h, None, len, &mut out);
            let text = String::from_utf8(out.to_vec()).unwrap();
            assert_eq!(text.contains("content-length: "), has, "{m} {len}");
        }
    }
}
