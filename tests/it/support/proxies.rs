//! Loopback proxies that record what they were asked: a SOCKS5 server
//! (RFC 1928/1929: the address type, the name or address, the credentials)
//! and an HTTP CONNECT proxy. Names are resolved from the test's own map
//! only — a name only they know proves veilgate made no DNS query of its
//! own. Each can misbehave as a test asks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One CONNECT asked of a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    /// SOCKS5 ATYP (1, 3, 4); 0 for HTTP CONNECT.
    pub atyp: u8,
    /// The name or address, as sent.
    pub host: String,
    pub port: u16,
    /// SOCKS5 username/password, or the CONNECT `proxy-authorization`.
    pub user: Option<String>,
    pub pass: Option<String>,
}

/// What the proxy does.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Connects and relays.
    Relay,
    /// SOCKS5: answers the CONNECT with this reply code.
    Refuse(u8),
    /// Closes after reading the greeting.
    CloseMidHandshake,
    /// Reads the greeting and then says nothing, holding the connection.
    Silent,
    /// Answers the greeting with these bytes, then closes.
    Garbage(&'static [u8]),
    /// HTTP CONNECT: answers with this status line.
    Status(&'static str),
}

pub struct Proxy {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
}

impl Proxy {
    /// A SOCKS5 server; `auth` requires username/password (any pair).
    pub async fn socks5(names: HashMap<String, SocketAddr>, auth: bool, mode: Mode) -> Proxy {
        Proxy::serve(names, mode, Kind::Socks5 { auth }).await
    }

    /// An HTTP proxy that takes CONNECT.
    pub async fn http_connect(names: HashMap<String, SocketAddr>, mode: Mode) -> Proxy {
        Proxy::serve(names, mode, Kind::Connect).await
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    async fn serve(names: HashMap<String, SocketAddr>, mode: Mode, kind: Kind) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (log, names) = (Arc::clone(&asked), Arc::new(names));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (log, names, mode) = (Arc::clone(&log), Arc::clone(&names), mode.clone());
                tokio::spawn(async move {
                    let _ = match kind {
                        Kind::Socks5 { auth } => socks5_session(client, auth, &names, &mode, &log).await,
                        Kind::Connect => connect_session(client, &names, &mode, &log).await,
                    };
                });
            }
        });
        Proxy { addr, asked }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Socks5 { auth: bool },
    Connect,
}

fn resolve(names: &HashMap<String, SocketAddr>, host: &str, port: u16) -> Option<SocketAddr> {
    names.get(host).copied().or_else(|| format!("{host}:{port}").parse().ok())
}

async fn socks5_session(
    mut client: TcpStream,
    auth: bool,
    names: &HashMap<String, SocketAddr>,
    mode: &Mode,
    log: &Mutex<Vec<Asked>>,
) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await?;
    match mode {
        Mode::CloseMidHandshake => return Ok(()),
        Mode::Garbage(bytes) => return client.write_all(bytes).await,
        Mode::Silent => {
            // Until veilgate gives up and closes.
            let _ = client.read(&mut [0u8; 1]).await;
            return Ok(());
        }
        _ => {}
    }
    let wanted = if auth { 2 } else { 0 };
    if !methods.contains(&wanted) {
        return client.write_all(&[5, 0xff]).await;
    }
    client.write_all(&[5, wanted]).await?;
    let (mut user, mut pass) = (None, None);
    if auth {
        let mut v = [0u8; 2];
        client.read_exact(&mut v).await?;
        let mut u = vec![0u8; usize::from(v[1])];
        client.read_exact(&mut u).await?;
        let mut plen = [0u8; 1];
        client.read_exact(&mut plen).await?;
        let mut p = vec![0u8; usize::from(plen[0])];
        client.read_exact(&mut p).await?;
        user = Some(String::from_utf8_lossy(&u).into_owned());
        pass = Some(String::from_utf8_lossy(&p).into_owned());
        client.write_all(&[1, 0]).await?;
    }
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).await?;
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    log.lock().unwrap().push(Asked { atyp: req[3], host: host.clone(), port, user, pass });
    if let Mode::Refuse(code) = mode {
        return client.write_all(&[5, *code, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    }
    let Some(target) = resolve(names, &host, port) else {
        return client.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    };
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    };
    client.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await.map(|_| ())
}

async fn connect_session(
    mut client: TcpStream,
    names: &HashMap<String, SocketAddr>,
    mode: &Mode,
    log: &Mutex<Vec<Asked>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let authority = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let (host, port) = authority.rsplit_once(':').unwrap_or((&authority, "0"));
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port: u16 = port.parse().unwrap_or(0);
    let auth = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("proxy-authorization: ").or_else(|| l.strip_prefix("Proxy-Authorization: ")))
        .map(str::to_owned);
    log.lock().unwrap().push(Asked { atyp: 0, host: host.clone(), port, user: auth, pass: None });
    match mode {
        Mode::Status(line) => return client.write_all(format!("{line}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await,
        Mode::Garbage(bytes) => return client.write_all(bytes).await,
        Mode::CloseMidHandshake => return Ok(()),
        _ => {}
    }
    let Some(target) = resolve(names, &host, port) else {
        return client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
    };
    let mut upstream = TcpStream::connect(target).await?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await.map(|_| ())
}
