//! DNS over HTTPS (SPEC §10) against loopback DoH servers over TLS with a
//! test certificate: names only they know, NXDOMAIN, private answers,
//! failover, truncated and oversized answers.

use std::net::Ipv4Addr;

use crate::support::client::send;
use crate::support::origin::{Captured, RawOrigin, Step};
use crate::support::proxies::{Mode, Proxy};
use crate::support::tls::TestCa;
use crate::support::{TOKEN, Veilgate};

/// The name asked in a DNS query, and whether it asks for A.
fn question(msg: &[u8]) -> (String, bool) {
    let mut at = 12;
    let mut labels = Vec::new();
    while let Some(&len) = msg.get(at) {
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(&msg[at + 1..at + 1 + usize::from(len)]).into_owned());
        at += 1 + usize::from(len);
    }
    let qtype = u16::from_be_bytes([msg[at + 1], msg[at + 2]]);
    (labels.join("."), qtype == 1)
}

/// The answer to `query`: `rcode`, and an A record for each address when it
/// asks for A.
fn dns_answer(query: &[u8], rcode: u8, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let (_, wants_a) = question(query);
    let mut msg = query.to_vec();
    msg[2] = 0x81;
    msg[3] = 0x80 | rcode;
    let records: &[Ipv4Addr] = if wants_a { addrs } else { &[] };
    msg[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    for a in records {
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        msg.extend_from_slice(&ttl.to_be_bytes());
        msg.extend_from_slice(&[0, 4]);
        msg.extend_from_slice(&a.octets());
    }
    msg
}

fn doh_response(body: &[u8]) -> Vec<Step> {
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/dns-message\r\ncontent-length: {}\r\n\r\n", body.len());
    vec![Step::Write([head.as_bytes(), body].concat())]
}

/// A DoH server that knows a few names.
async fn doh_server(ca: &TestCa) -> RawOrigin {
    RawOrigin::scripted_tls(ca, |c: &Captured| {
        let (name, _) = question(&c.body);
        match name.as_str() {
            "api.doh.test" => doh_response(&dns_answer(&c.body, 0, &[Ipv4Addr::LOCALHOST], 300)),
            "private.doh.test" => doh_response(&dns_answer(&c.body, 0, &[Ipv4Addr::new(10, 0, 0, 1)], 300)),
            "truncated.doh.test" => {
                let mut m = dns_answer(&c.body, 0, &[Ipv4Addr::LOCALHOST], 300);
                m[2] |= 0x02;
                doh_response(&m)
            }
            "huge.doh.test" => doh_response(&vec![0u8; 70_000]),
            _ => doh_response(&dns_answer(&c.body, 3, &[], 0)),
        }
    })
    .await
}

#[tokio::test]
async fn names_are_resolved_over_https_only_and_checked() {
    let ca = TestCa::new();
    let doh = doh_server(&ca).await;
    let (_dead_held, dead) = crate::support::refused_addr();
    // Every answer closes its connection, so each request connects anew.
    let origin =
        RawOrigin::start(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_vec()).await;
    let vg = Veilgate::start(&format!(
        "[upstream]\nextra_ca_file = {:?}\n\
         [dns]\nresolver = \"doh\"\ndoh_servers = [\"https://{dead}/dns-query\", \"https://{}/dns-query\"]\n\
         [presets.api]\ntargets = [\"http://api.doh.test:{}\"]\n\
         [presets.nx]\ntargets = [\"http://nx.doh.test:{}\"]\n\
         [presets.cut]\ntargets = [\"http://truncated.doh.test:{}\"]\n\
         [presets.huge]\ntargets = [\"http://huge.doh.test:{}\"]\n",
        ca.ca_file,
        doh.addr,
        origin.addr.port(),
        origin.addr.port(),
        origin.addr.port(),
        origin.addr.port()
    ))
    .await;
    // A name no system resolver knows: the first DoH server is down, the
    // second answers.
    for _ in 0..3 {
        let reply = send(vg.addr, "GET", "/api/v1/models", &[], b"").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(origin.requests().len(), 3);
    let asked = doh.requests();
    assert_eq!(asked.len(), 2, "A and AAAA once; then the cache (TTL 300 s)");
    for q in &asked {
        assert_eq!(q.request_line(), "POST /dns-query HTTP/1.1");
        assert_eq!(q.header("content-type").as_deref(), Some("application/dns-message"));
        assert_eq!(q.sni, None, "an IP-literal server gets no SNI");
        assert_eq!(&q.body[..2], [0, 0], "DoH queries carry id 0");
    }

    let nx = send(vg.addr, "GET", "/nx/v1", &[], b"").await.assert_proxy_error(502);
    assert!(nx["error"]["message"].as_str().unwrap().contains("nx.doh.test does not exist"), "{nx}");
    for preset in ["cut", "huge"] {
        let body = send(vg.addr, "GET", &format!("/{preset}/v1"), &[], b"").await.assert_proxy_error(502);
        assert!(body["error"]["message"].as_str().unwrap().contains("DNS over HTTPS"), "{preset}: {body}");
    }
    // The target check applies to what DoH answered.
    let generic = format!("/{TOKEN}/http/private.doh.test/x");
    send(vg.addr, "GET", &generic, &[], b"").await.assert_proxy_error(403);
    assert_eq!(origin.requests().len(), 3, "nothing else reached the origin");
}

#[tokio::test]
async fn doh_settings_that_cannot_work_are_refused_at_start() {
    for (toml, named) in [
        ("[dns]\nresolver = \"doh\"\ndoh_servers = [\"https://dns.example/dns-query\"]", "needs dns.bootstrap"),
        ("[dns]\nresolver = \"doh\"\nbootstrap = [\"dns.example\"]", "not an IP address"),
        ("[dns]\nresolver = \"doh\"\ndoh_servers = [\"http://1.1.1.1/dns-query\"]", "https://"),
        ("[dns]\nresolver = \"doh\"\ndoh_servers = []", "at least one"),
        ("[dns]\nresolver = \"bind9\"", "dns.resolver"),
        ("[dns]\nresolver = \"doh\"\negress = \"nowhere\"", "dns.egress"),
    ] {
        let raw = veilgate::config::RawConfig::from_toml(toml).unwrap();
        let e = veilgate::config::Config::from_raw(raw, &|_| None).unwrap_err().to_string();
        assert!(e.contains(named), "{toml}: {e}");
    }
    // Through an exit that resolves names itself, a server's name needs no
    // bootstrap: it goes to the exit as a name.
    let toml = "[egress.tor]\nsocks5 = \"127.0.0.1:9050\"\n\
                [dns]\nresolver = \"doh\"\ndoh_servers = [\"https://dns.example/dns-query\"]\negress = \"tor\"";
    let raw = veilgate::config::RawConfig::from_toml(toml).unwrap();
    assert!(veilgate::config::Config::from_raw(raw, &|_| None).is_ok());
}

#[tokio::test]
async fn the_relay_passes_dns_messages_and_nothing_of_the_client() {
    use base64::Engine;
    let ca = TestCa::new();
    let doh = doh_server(&ca).await;
    let vg = Veilgate::start(&format!(
        "[upstream]\nextra_ca_file = {:?}\n[dns]\nrelay = true\ndoh_servers = [\"https://{}/dns-query\"]\n\
         [[clients]]\nname = \"plain\"\ntoken = \"plain_client_token_0123456789\"\n",
        ca.ca_file, doh.addr
    ))
    .await;
    let query = veilgate::dns::wire::query("api.doh.test", veilgate::dns::wire::Kind::A).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&query);
    let get = send(vg.addr, "GET", &format!("/{TOKEN}/dns-query?dns={b64}"), &[("cookie", "c=1")], b"").await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(get.header("content-type"), Some("application/dns-message"));
    let addrs = veilgate::dns::wire::answers(&get.body).unwrap();
    assert_eq!(addrs, [(std::net::IpAddr::from(Ipv4Addr::LOCALHOST), 300)]);
    let dns = [("content-type", "application/dns-message"), ("user-agent", "my-resolver/1.0")];
    let post = send(vg.addr, "POST", &format!("/{TOKEN}/dns-query"), &dns, &query).await;
    assert_eq!((post.status, post.body.clone()), (200, get.body.clone()));
    for seen in doh.requests() {
        assert_eq!(seen.body, query, "the message as the client sent it");
        assert!(seen.header("cookie").is_none() && seen.header("user-agent").as_deref() != Some("my-resolver/1.0"));
    }
    // Without a caller 401; a client without generic routes 403; another
    // content type 415; more than 4096 bytes 413; not a DNS message 400.
    send(vg.addr, "GET", &format!("/dns-query?dns={b64}"), &[], b"").await.assert_proxy_error(401);
    let plain = [("x-veilgate-token", "plain_client_token_0123456789")];
    send(vg.addr, "GET", &format!("/dns-query?dns={b64}"), &plain, b"").await.assert_proxy_error(403);
    let json = [("content-type", "application/json")];
    send(vg.addr, "POST", &format!("/{TOKEN}/dns-query"), &json, &query).await.assert_proxy_error(415);
    send(vg.addr, "POST", &format!("/{TOKEN}/dns-query"), &dns, &vec![0u8; 5000]).await.assert_proxy_error(413);
    send(vg.addr, "GET", &format!("/{TOKEN}/dns-query?dns=AAAA"), &[], b"").await.assert_proxy_error(400);
    assert_eq!(doh.requests().len(), 2, "refused messages never reached the server");
}

#[tokio::test]
async fn a_doh_server_by_name_is_reached_at_its_bootstrap_address() {
    let ca = TestCa::new();
    let doh = doh_server(&ca).await;
    let origin = RawOrigin::json("{}").await;
    // `doh.test` is in no resolver: only the bootstrap address finds it.
    let vg = Veilgate::start(&format!(
        "[upstream]\nextra_ca_file = {:?}\n\
         [dns]\nresolver = \"doh\"\ndoh_servers = [\"https://doh.test:{}/dns-query\"]\nbootstrap = [\"127.0.0.1\"]\n\
         [presets.api]\ntargets = [\"http://api.doh.test:{}\"]\n",
        ca.ca_file,
        doh.addr.port(),
        origin.addr.port()
    ))
    .await;
    let reply = send(vg.addr, "GET", "/api/v1/models", &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let asked = doh.requests();
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|q| q.sni.as_deref() == Some("doh.test")), "SNI and certificate for the server's name");
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn resolve_local_asks_doh_checks_the_answer_and_sends_the_address() {
    let ca = TestCa::new();
    let doh = doh_server(&ca).await;
    let origin = RawOrigin::json("{}").await;
    let names = std::collections::HashMap::from([("api.doh.test".to_owned(), origin.addr)]);
    let exit = Proxy::socks5(names, false, Mode::Relay).await;
    let vg = Veilgate::start(&format!(
        "[egress.local]\nsocks5 = \"{}\"\nresolve = \"local\"\n\
         [upstream]\negress = \"local\"\nextra_ca_file = {:?}\n\
         [dns]\nresolver = \"doh\"\ndoh_servers = [\"https://{}/dns-query\"]\negress = \"direct\"\n\
         [presets.api]\ntargets = [\"http://api.doh.test:{}\"]\n",
        exit.addr,
        ca.ca_file,
        doh.addr,
        origin.addr.port()
    ))
    .await;
    let reply = send(vg.addr, "GET", "/api/v1/models", &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let asked = exit.asked();
    assert_eq!((asked[0].atyp, asked[0].host.as_str()), (1, "127.0.0.1"), "the address DoH answered, not the name");
    assert_eq!(doh.requests().len(), 2);
    // A name DoH answers with a private address is refused before the exit
    // is asked for it.
    send(vg.addr, "GET", &format!("/{TOKEN}/http/private.doh.test/x"), &[], b"").await.assert_proxy_error(403);
    assert_eq!(exit.asked().len(), 1);
    assert_eq!(origin.requests().len(), 1);
}
