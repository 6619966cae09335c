//! A raw HTTP/1.1 client: writes exactly the request bytes a test builds
//! (so odd paths arrive unnormalised) and reads the response to EOF.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use veilgate::upstream::chunked::BodyDecoder;
use veilgate::upstream::parse::parse_head;

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// False when the body ended before its framing said it would.
    pub complete: bool,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a veilgate JSON error with this status.
    pub fn assert_proxy_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("x-proxy-error"), Some("true"));
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["error"]["code"], status);
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(v["error"]["status"].as_str().is_some_and(|s| s.chars().all(|c| c.is_ascii_uppercase() || c == '_')));
        assert!(v["error"]["timestamp"].as_str().is_some());
        v
    }
}

/// Sends `method target` with `headers` (a `host` of `127.0.0.1:PORT`
/// unless given) and `connection: close`, then reads the whole response.
pub async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(addr, &bytes, method == "HEAD").await
}

/// Writes `bytes` as they are and reads one response to EOF.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8], head_request: bool) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to veilgate");
    stream.write_all(bytes).await.expect("write request");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_reply(&raw, head_request)
}

/// Parses a complete response read to EOF.
pub fn parse_reply(raw: &[u8], head_request: bool) -> Reply {
    let mut buf = BytesMut::from(raw);
    let head = loop {
        match parse_head(&mut buf, 1 << 20).expect("valid head") {
            Some(head) if head.is_interim() => continue,
            Some(head) => break head,
            // The connection closed before a response: an aborted exchange.
            None => return Reply { status: 0, headers: http::HeaderMap::new(), body: Vec::new(), complete: false },
        }
    };
    let method = if head_request { http::Method::HEAD } else { http::Method::GET };
    let mut decoder = BodyDecoder::new(head.framing(&method).expect("framing"));
    let mut body = Vec::new();
    let mut complete = true;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(data)) => body.extend_from_slice(&data),
            Ok(None) => {
                if !decoder.is_done() {
                    complete = decoder.eof().is_ok();
                }
                break;
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    Reply { status: head.status.as_u16(), headers: head.headers, body, complete }
}

/// A response whose body is read piece by piece, as it arrives.
pub struct Streaming {
    stream: TcpStream,
    buf: BytesMut,
    decoder: BodyDecoder,
    pub status: u16,
    pub headers: http::HeaderMap,
    /// Body bytes read but not yet returned by [`Streaming::read_until`].
    pending: Vec<u8>,
}

/// How a streamed body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Clean,
    Aborted,
}

/// Sends a GET (or `method`) and returns once the response head arrived.
pub async fn open(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Streaming {
    open_with_body(addr, method, target, headers, b"").await
}

/// Like [`open`], with a request body.
pub async fn open_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Streaming {
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let mut stream = TcpStream::connect(addr).await.expect("connect to veilgate");
    stream.write_all(&bytes).await.expect("write request");
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some(head) = parse_head(&mut buf, 1 << 20).expect("valid head") {
            if head.is_interim() {
                continue;
            }
            break head;
        }
        let n = stream.read_buf(&mut buf).await.expect("read head");
        assert!(n > 0, "veilgate closed before the response head");
    };
    let framing = head.framing(&http::Method::GET).expect("framing");
    Streaming {
        stream,
        buf,
        decoder: BodyDecoder::new(framing),
        status: head.status.as_u16(),
        headers: head.headers,
        pending: Vec::new(),
    }
}

impl Streaming {
    /// The next piece of body, or how the body ended.
    pub async fn next(&mut self) -> Result<Vec<u8>, End> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(data)) => return Ok(data.to_vec()),
                Ok(None) if self.decoder.is_done() => return Err(End::Clean),
                Ok(None) => {}
                Err(_) => return Err(End::Aborted),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return Err(if self.decoder.eof().is_ok() { End::Clean } else { End::Aborted });
                }
                Ok(_) => {}
                Err(_) => return Err(End::Aborted),
            }
        }
    }

    /// Goes away with a reset (RST), as a killed client does.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
    }

    /// Body bytes up to and including the next `delim` (an SSE event ends
    /// with a blank line).
    pub async fn read_until(&mut self, delim: &[u8]) -> Result<Vec<u8>, End> {
        loop {
            if let Some(i) = crate::support::origin::find(&self.pending, delim) {
                let rest = self.pending.split_off(i + delim.len());
                return Ok(std::mem::replace(&mut self.pending, rest));
            }
            let data = self.next().await?;
            self.pending.extend_from_slice(&data);
        }
    }

    /// Reads the rest of the body and says how it ended.
    pub async fn finish(&mut self) -> (Vec<u8>, End) {
        let mut body = std::mem::take(&mut self.pending);
        loop {
            match self.next().await {
                Ok(data) => body.extend_from_slice(&data),
                Err(end) => return (body, end),
            }
        }
    }
}
