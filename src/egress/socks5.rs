//! The client side of SOCKS5 (RFC 1928) with username/password
//! authentication (RFC 1929): the bytes of each message, and the handshake
//! over a stream. A host name goes to the proxy unresolved (ATYP 3), so the
//! exit resolves it and this machine's resolver never learns it.

use std::net::{Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where the proxy is asked to connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// Why a SOCKS5 handshake failed. The text names the proxy's reply, never
/// the credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    #[error("the proxy closed the connection during the SOCKS5 handshake")]
    Closed,
    #[error("the SOCKS5 handshake failed: {0}")]
    Io(String),
    #[error("the proxy's SOCKS5 reply is malformed ({0})")]
    Malformed(&'static str),
    #[error("the proxy accepts none of the offered SOCKS5 authentication methods")]
    NoMethod,
    #[error("the proxy refused the SOCKS5 username/password")]
    AuthFailed,
    #[error("the SOCKS5 proxy answered {code:#04x}: {}", reply_text(*code))]
    Refused { code: u8 },
    #[error("{0} is too long for SOCKS5 (255 bytes at most)")]
    TooLong(&'static str),
}

/// RFC 1928 §6's reply codes.
pub fn reply_text(code: u8) -> &'static str {
    match code {
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unknown reply",
    }
}

/// The method selection message: no authentication, or only
/// username/password when there are credentials (so an isolating exit
/// cannot skip them).
pub fn greeting(with_credentials: bool) -> [u8; 3] {
    if with_credentials { [0x05, 0x01, 0x02] } else { [0x05, 0x01, 0x00] }
}

/// RFC 1929's username/password request.
pub fn auth_request(user: &[u8], pass: &[u8]) -> Result<Vec<u8>, Socks5Error> {
    let ulen = u8::try_from(user.len()).map_err(|_| Socks5Error::TooLong("the username"))?;
    let plen = u8::try_from(pass.len()).map_err(|_| Socks5Error::TooLong("the password"))?;
    let mut out = vec![0x01, ulen];
    out.extend_from_slice(user);
    out.push(plen);
    out.extend_from_slice(pass);
    Ok(out)
}

/// The CONNECT request for `dest:port`.
pub fn connect_request(dest: Dest<'_>, port: u16) -> Result<Vec<u8>, Socks5Error> {
    let mut out = vec![0x05, 0x01, 0x00];
    match dest {
        Dest::V4(a) => {
            out.push(0x01);
            out.extend_from_slice(&a.octets());
        }
        Dest::V6(a) => {
            out.push(0x04);
            out.extend_from_slice(&a.octets());
        }
        Dest::Name(name) => {
            let len = u8::try_from(name.len()).map_err(|_| Socks5Error::TooLong("the host name"))?;
            out.push(0x03);
            out.push(len);
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    Ok(out)
}

async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), Socks5Error> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Socks5Error::Closed),
        Err(e) => Err(Socks5Error::Io(e.kind().to_string())),
    }
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), Socks5Error> {
    stream.write_all(bytes).await.map_err(|e| Socks5Error::Io(e.kind().to_string()))
}

/// Runs the handshake on a connected stream: method selection, the
/// credentials when given, CONNECT, and the proxy's reply (whose bound
/// address is read and dropped). The caller bounds it with its timeout.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    credentials: Option<(&[u8], &[u8])>,
    dest: Dest<'_>,
    port: u16,
) -> Result<(), Socks5Error> {
    let request = connect_request(dest, port)?;
    let auth = credentials.map(|(u, p)| auth_request(u, p)).transpose()?;
    write_all(stream, &greeting(auth.is_some())).await?;
    let mut choice = [0u8; 2];
    read_exact(stream, &mut choice).await?;
    match choice {
        [0x05, 0x00] if auth.is_none() => {}
        [0x05, 0x02] if auth.is_some() => {
            write_all(stream, auth.as_deref().unwrap_or_default()).await?;
            let mut status = [0u8; 2];
            read_exact(stream, &mut status).await?;
            match status {
                [0x01, 0x00] => {}
                [0x01, _] => return Err(Socks5Error::AuthFailed),
                _ => return Err(Socks5Error::Malformed("authentication status")),
            }
        }
        [0x05, 0xff] => return Err(Socks5Error::NoMethod),
        [0x05, _] => return Err(Socks5Error::Malformed("a method that was not offered")),
        _ => return Err(Socks5Error::Malformed("not SOCKS version 5")),
    }
    write_all(stream, &request).await?;
    let mut head = [0u8; 4];
    read_exact(stream, &mut head).await?;
    if head[0] != 0x05 {
        return Err(Socks5Error::Malformed("not SOCKS version 5"));
    }
    if head[1] != 0x00 {
        return Err(Socks5Error::Refused { code: head[1] });
    }
    let addr_len = match head[3] {
        0x01 => 4,
        0x04 => 16,
        0x03 => {
            let mut len = [0u8; 1];
            read_exact(stream, &mut len).await?;
            usize::from(len[0])
        }
        _ => return Err(Socks5Error::Malformed("an unknown address type")),
    };
    let mut bound = [0u8; 255 + 2];
    read_exact(stream, &mut bound[..addr_len + 2]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_byte_for_byte() {
        assert_eq!(greeting(false), [5, 1, 0]);
        assert_eq!(greeting(true), [5, 1, 2]);
        assert_eq!(auth_request(b"ab", b"c").unwrap(), [1, 2, b'a', b'b', 1, b'c']);
        assert_eq!(
            connect_request(Dest::Name("api.example"), 443).unwrap(),
            [&[5, 1, 0, 3, 11][..], b"api.example", &[1, 187]].concat()
        );
        assert_eq!(connect_request(Dest::V4(Ipv4Addr::new(1, 2, 3, 4)), 80).unwrap(), [5, 1, 0, 1, 1, 2, 3, 4, 0, 80]);
        let v6 = connect_request(Dest::V6(Ipv6Addr::LOCALHOST), 1).unwrap();
        assert_eq!((v6[3], v6.len()), (4, 4 + 16 + 2));
        assert_eq!(connect_request(Dest::Name(&"a".repeat(256)), 1), Err(Socks5Error::TooLong("the host name")));
        assert!(auth_request(&[b'u'; 256], b"p").is_err());
    }

    /// The handshake against scripted proxy replies.
    async fn against(replies: &[u8], credentials: Option<(&[u8], &[u8])>) -> (Result<(), Socks5Error>, Vec<u8>) {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        theirs.write_all(replies).await.unwrap();
        drop(theirs.shutdown().await);
        let result = handshake(&mut ours, credentials, Dest::Name("only.the.exit.knows"), 443).await;
        drop(ours);
        let mut sent = Vec::new();
        theirs.read_to_end(&mut sent).await.unwrap();
        (result, sent)
    }

    #[tokio::test]
    async fn handshakes_and_every_kind_of_refusal() {
        let ok_reply = [5, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let (r, sent) = against(&[&[5, 0][..], &ok_reply].concat(), None).await;
        assert_eq!(r, Ok(()));
        assert_eq!(&sent[..3], [5, 1, 0]);
        assert_eq!(sent[6], 3, "a name goes unresolved (ATYP 3)");
        let (r, sent) = against(&[&[5, 2, 1, 0][..], &ok_reply].concat(), Some((b"user", b"pw"))).await;
        assert_eq!(r, Ok(()));
        assert_eq!(&sent[3..12], [1, 4, b'u', b's', b'e', b'r', 2, b'p', b'w']);
        // A bound address given as a name is read past.
        let named = [&[5, 0, 5, 0, 0, 3, 4][..], b"abcd", &[0, 1]].concat();
        assert_eq!(against(&named, None).await.0, Ok(()));
        for (replies, creds, want) in [
            (&[5, 0xff][..], None, Socks5Error::NoMethod),
            (&[5, 2, 1, 1], Some((&b"u"[..], &b"p"[..])), Socks5Error::AuthFailed),
            (&[5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0], None, Socks5Error::Refused { code: 5 }),
            (&[5, 0, 5, 2, 0, 1], None, Socks5Error::Refused { code: 2 }),
            (&[4, 0], None, Socks5Error::Malformed("not SOCKS version 5")),
            (&[5, 2], None, Socks5Error::Malformed("a method that was not offered")),
            (&[5, 0, 5, 0, 0, 9], None, Socks5Error::Malformed("an unknown address type")),
            (&[5, 0, 5, 0, 0, 1, 1, 2], None, Socks5Error::Closed),
            (&[5], None, Socks5Error::Closed),
            (&[], None, Socks5Error::Closed),
        ] {
            assert_eq!(against(replies, creds).await.0, Err(want.clone()), "{replies:?}");
        }
        let text = Socks5Error::Refused { code: 5 }.to_string();
        assert!(text.contains("0x05") && text.contains("connection refused"), "{text}");
    }
}
