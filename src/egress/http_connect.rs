//! An HTTP proxy reached with `CONNECT host:port` (RFC 9110 §9.3.6): the
//! request, and the proxy's answer read head only. A name goes to the proxy
//! as a name.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest answer head read from a proxy.
const MAX_HEAD: usize = 8 * 1024;

/// Why a CONNECT failed (never the credentials).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the proxy closed the connection before answering CONNECT")]
    Closed,
    #[error("CONNECT failed: {0}")]
    Io(String),
    #[error("the proxy's answer to CONNECT is not HTTP")]
    Garbage,
    #[error("the proxy's answer to CONNECT is over {MAX_HEAD} bytes")]
    TooBig,
    #[error("the proxy answered CONNECT with {0}")]
    Refused(u16),
    #[error("the proxy sent data before the tunnel was used")]
    Early,
}

/// `CONNECT authority HTTP/1.1` with `host`, and `proxy-authorization`
/// when given (its value as it goes on the wire, e.g. `Basic …`).
pub fn request(authority: &str, proxy_authorization: Option<&str>) -> Vec<u8> {
    let mut out = format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n");
    if let Some(v) = proxy_authorization {
        out.push_str("proxy-authorization: ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Sends CONNECT and reads the proxy's answer; `Ok` on a 2xx with nothing
/// after its head. The caller bounds it with its timeout.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    authority: &str,
    proxy_authorization: Option<&str>,
) -> Result<(), ConnectError> {
    let io = |e: std::io::Error| ConnectError::Io(e.kind().to_string());
    stream.write_all(&request(authority, proxy_authorization)).await.map_err(io)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(if buf.is_empty() { ConnectError::Closed } else { ConnectError::Garbage });
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = resp.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    return Err(ConnectError::Refused(code));
                }
                return if len == buf.len() { Ok(()) } else { Err(ConnectError::Early) };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(ConnectError::TooBig),
            Err(_) => return Err(ConnectError::Garbage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn against(reply: &[u8]) -> (Result<(), ConnectError>, String) {
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        theirs.write_all(reply).await.unwrap();
        drop(theirs.shutdown().await);
        let r = handshake(&mut ours, "api.example:443", Some("Basic dTpw")).await;
        drop(ours);
        let mut sent = Vec::new();
        theirs.read_to_end(&mut sent).await.unwrap();
        (r, String::from_utf8(sent).unwrap())
    }

    #[tokio::test]
    async fn answers() {
        let (r, sent) = against(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        assert_eq!(r, Ok(()));
        assert_eq!(
            sent,
            "CONNECT api.example:443 HTTP/1.1\r\nhost: api.example:443\r\nproxy-authorization: Basic dTpw\r\n\r\n"
        );
        assert_eq!(
            against(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await.0,
            Err(ConnectError::Refused(407))
        );
        assert_eq!(against(b"SSH-2.0-OpenSSH\r\n\r\n").await.0, Err(ConnectError::Garbage));
        assert_eq!(against(b"HTTP/1.1 200 OK\r\n").await.0, Err(ConnectError::Garbage), "closed mid-head");
        assert_eq!(against(b"").await.0, Err(ConnectError::Closed));
        assert_eq!(against(b"HTTP/1.1 200 OK\r\n\r\nextra").await.0, Err(ConnectError::Early));
        let big = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(against(big.as_bytes()).await.0, Err(ConnectError::TooBig));
    }
}
