//! A raw-bytes TCP origin: records each request exactly as it arrived and
//! answers with bytes the test scripts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Captured {
    /// The head, request line to blank line inclusive, byte for byte.
    pub head: String,
    pub body: Vec<u8>,
}

impl Captured {
    /// `METHOD target HTTP/1.1`
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    /// The request target, byte for byte.
    pub fn target(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or_default()
    }

    /// Header lines after the request line, as (lowercase name, value).
    pub fn headers(&self) -> Vec<(String, String)> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line has a colon");
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

type Reply = dyn Fn(&Captured) -> Vec<u8> + Send + Sync;

/// The origin; keeps serving until the test ends.
pub struct RawOrigin {
    pub addr: SocketAddr,
    captured: Arc<Mutex<Vec<Captured>>>,
    connections: Arc<Mutex<usize>>,
}

impl RawOrigin {
    /// Starts an origin that answers every request with `reply(request)`.
    pub async fn start(reply: impl Fn(&Captured) -> Vec<u8> + Send + Sync + 'static) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let reply: Arc<Reply> = Arc::new(reply);
        let (cap, conns) = (Arc::clone(&captured), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                *conns.lock().unwrap() += 1;
                let (cap, reply) = (Arc::clone(&cap), Arc::clone(&reply));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(req) = read_request(&mut stream, &mut buf).await else {
                            return;
                        };
                        cap.lock().unwrap().push(req.clone());
                        let out = reply(&req);
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawOrigin {
            addr,
            captured,
            connections,
        }
    }

    /// Answers every request with a JSON body.
    pub async fn json(body: &'static str) -> RawOrigin {
        RawOrigin::start(move |_| json_response(body)).await
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }

    /// The only request received; panics if there was not exactly one.
    pub fn only_request(&self) -> Captured {
        let all = self.requests();
        assert_eq!(all.len(), 1, "expected exactly one upstream request");
        all[0].clone()
    }

    pub fn connection_count(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// `200 OK` with a JSON body and content-length framing.
pub fn json_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one request (head + content-length body); `None` on EOF.
async fn read_request(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Captured> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len = head
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(Captured { head, body });
        }
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
