//! Egress (SPEC §10) against loopback proxies that record what they were
//! asked — names that only the proxy can resolve, credentials, isolation —
//! and a real SOCKS5 server from Debian (`microsocks`); every way an exit
//! fails is the exit's 502, never a direct connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::client::send;
use crate::support::hyper_origin::HyperOrigin;
use crate::support::origin::{RawOrigin, Step, json_response};
use crate::support::proxies::{Asked, Mode, Proxy};
use crate::support::tls::TestCa;
use crate::support::ws_origin::{Behavior, WsOrigin};
use crate::support::{TOKEN, Veilgate};

/// A name no resolver knows but the test's proxies.
const SECRET_NAME: &str = "only.the.exit.knows";

fn names(origin: SocketAddr) -> HashMap<String, SocketAddr> {
    HashMap::from([(SECRET_NAME.to_owned(), origin), ("localhost".to_owned(), origin)])
}

#[tokio::test]
async fn names_go_to_the_exit_unresolved_and_addresses_are_checked_first() {
    let origin = RawOrigin::json("{\"ok\":true}").await;
    let proxy = Proxy::socks5(names(origin.addr), false, Mode::Relay).await;
    let vg = Veilgate::start(&format!(
        "[egress.tor]\nsocks5 = \"{}\"\n[upstream]\negress = \"tor\"\n\
         [presets.hidden]\ntargets = [\"http://{SECRET_NAME}:8081\"]\n",
        proxy.addr
    ))
    .await;
    let reply = send(vg.addr, "GET", "/hidden/v1/models", &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        proxy.asked(),
        [Asked { atyp: 3, host: SECRET_NAME.into(), port: 8081, user: None, pass: None }],
        "the name went to the exit as a name (ATYP 3): no local DNS query could have found it"
    );
    assert_eq!(origin.only_request().header("host").as_deref(), Some(&*format!("{SECRET_NAME}:8081")));

    // A generic route to a private address literal is refused before the
    // proxy is asked anything.
    let generic = format!("/{TOKEN}/http/10.1.2.3/x");
    send(vg.addr, "GET", &generic, &[], b"").await.assert_proxy_error(403);
    assert_eq!(proxy.asked().len(), 1);
}

#[tokio::test]
async fn tls_runs_end_to_end_through_the_exit() {
    let ca = TestCa::new();
    let origin = RawOrigin::scripted_tls(&ca, |_| vec![Step::Write(json_response("{\"tls\":true}"))]).await;
    let proxy = Proxy::http_connect(names(origin.addr), Mode::Relay).await;
    let vg = Veilgate::start(&format!(
        "[egress.office]\nhttp_connect = \"{}\"\nproxy_authorization = \"me:secret-pass\"\n\
         [upstream]\negress = \"office\"\nextra_ca_file = {:?}\n\
         [presets.api]\ntargets = [\"https://localhost:{}\"]\n",
        proxy.addr,
        ca.ca_file,
        origin.addr.port()
    ))
    .await;
    let reply = send(vg.addr, "GET", "/api/v1/models", &[], b"").await;
    assert_eq!((reply.status, reply.text()), (200, "{\"tls\":true}".into()));
    let asked = proxy.asked();
    assert_eq!((asked[0].atyp, asked[0].host.as_str(), asked[0].port), (0, "localhost", origin.addr.port()));
    assert_eq!(asked[0].user.as_deref(), Some("Basic bWU6c2VjcmV0LXBhc3M="), "proxy_authorization as Basic");
    assert_eq!(origin.only_request().sni.as_deref(), Some("localhost"), "SNI and certificate for the API's host");
}

#[tokio::test]
async fn credentials_and_isolation_per_client() {
    let origin = RawOrigin::json("{}").await;
    let fixed = Proxy::socks5(names(origin.addr), true, Mode::Relay).await;
    let isolating = Proxy::socks5(names(origin.addr), true, Mode::Relay).await;
    let vg = Veilgate::start(&format!(
        "[egress.vpn]\nsocks5 = \"{}\"\nusername = \"me\"\npassword = \"pw-123\"\n\
         [egress.tor]\nsocks5 = \"{}\"\nisolate = \"client\"\n\
         [presets.fixed]\ntargets = [\"http://{SECRET_NAME}\"]\negress = \"vpn\"\n\
         [presets.iso]\ntargets = [\"http://{SECRET_NAME}\"]\negress = \"tor\"\n\
         [[clients]]\nname = \"alice\"\ntoken = \"alice_token_0123456789abcd\"\n\
         [[clients]]\nname = \"bob\"\ntoken = \"bob_token_0123456789abcdefg\"\n",
        fixed.addr, isolating.addr
    ))
    .await;
    let get = |path: &str, token: &str| {
        let (addr, path, token) = (vg.addr, path.to_owned(), token.to_owned());
        async move { send(addr, "GET", &path, &[("x-veilgate-token", &token)], b"").await.status }
    };
    assert_eq!(get("/fixed/a", "alice_token_0123456789abcd").await, 200);
    let a = fixed.asked();
    assert_eq!((a[0].user.as_deref(), a[0].pass.as_deref()), (Some("me"), Some("pw-123")));
    for token in ["alice_token_0123456789abcd", "alice_token_0123456789abcd", "bob_token_0123456789abcdefg"] {
        assert_eq!(get("/iso/a", token).await, 200);
    }
    let users: Vec<String> = isolating.asked().iter().filter_map(|a| a.user.clone()).collect();
    // Alice's second request reused her pooled connection; Bob got his own
    // identity (from his name, never his token) and his own connection.
    assert_eq!(users, ["veilgate-alice", "veilgate-bob"], "{users:?}");
    assert!(isolating.asked().iter().all(|a| !format!("{a:?}").contains("token")));
}

#[tokio::test]
async fn a_failing_exit_is_a_502_naming_it_and_never_a_direct_connection() {
    let origin = RawOrigin::json("{\"direct\":true}").await;
    let (_dead_held, dead) = crate::support::refused_addr();
    let refusing = Proxy::socks5(names(origin.addr), false, Mode::Refuse(5)).await;
    let closing = Proxy::socks5(names(origin.addr), false, Mode::CloseMidHandshake).await;
    let garbage = Proxy::socks5(names(origin.addr), false, Mode::Garbage(b"HTTP/1.1 400 Bad\r\n\r\n")).await;
    let auth =
        Proxy::http_connect(names(origin.addr), Mode::Status("HTTP/1.1 407 Proxy Authentication Required")).await;
    let junk = Proxy::http_connect(names(origin.addr), Mode::Garbage(b"SSH-2.0-nope\r\n\r\n")).await;
    let silent = Proxy::socks5(names(origin.addr), false, Mode::Silent).await;
    let exits = [
        ("dead", format!("socks5 = \"{dead}\""), "cannot reach the proxy"),
        ("refusing", format!("socks5 = \"{}\"", refusing.addr), "connection refused"),
        ("closing", format!("socks5 = \"{}\"", closing.addr), "closed the connection"),
        ("garbage", format!("socks5 = \"{}\"", garbage.addr), "malformed"),
        ("auth", format!("http_connect = \"{}\"\nproxy_authorization = \"u:topsecret\"", auth.addr), "407"),
        ("junk", format!("http_connect = \"{}\"", junk.addr), "not HTTP"),
        ("silent", format!("socks5 = \"{}\"", silent.addr), "did not finish its handshake in time"),
    ];
    let mut config = String::from("[upstream]\nconnect_timeout_ms = 1500\n");
    for (name, kind, _) in &exits {
        config.push_str(&format!(
            "[egress.{name}]\n{kind}\n[presets.{name}]\ntargets = [\"http://{}\"]\negress = \"{name}\"\n",
            origin.addr
        ));
    }
    let vg = Veilgate::start(&config).await;
    for (name, _, reason) in &exits {
        let started = std::time::Instant::now();
        let reply = send(vg.addr, "GET", &format!("/{name}/v1/models"), &[], b"").await;
        let body = reply.assert_proxy_error(502);
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(&format!("egress {name}")) && message.contains(reason), "{name}: {message}");
        assert!(!message.contains("topsecret") && !reply.text().contains("dTp0b3BzZWNyZXQ"), "{message}");
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{name} took {:?} (connect_timeout_ms 1500)",
            started.elapsed()
        );
    }
    assert!(origin.requests().is_empty(), "nothing went around the exits");
}

#[tokio::test]
async fn the_fetch_transport_goes_through_the_exit_too() {
    let ca = TestCa::new();
    for (alpn, want) in [(&[&b"h2"[..], &b"http/1.1"[..]][..], "HTTP/2.0"), (&[&b"http/1.1"[..]][..], "HTTP/1.1")] {
        let origin = HyperOrigin::start(&ca, alpn).await;
        let tor = Proxy::socks5(names(origin.addr), true, Mode::Relay).await;
        let vg = Veilgate::start(&format!(
            "[egress.tor]\nsocks5 = \"{}\"\nisolate = \"client\"\n\
             [upstream]\negress = \"tor\"\nextra_ca_file = {:?}\n\
             [presets.api]\ntargets = [\"https://localhost:{}\"]\nforce_fetch = true\n\
             [[clients]]\nname = \"alice\"\ntoken = \"alice_token_0123456789abcd\"\n\
             [[clients]]\nname = \"bob\"\ntoken = \"bob_token_0123456789abcdefg\"\n",
            tor.addr,
            ca.ca_file,
            origin.addr.port()
        ))
        .await;
        for token in ["alice_token_0123456789abcd", "bob_token_0123456789abcdefg"] {
            let r = send(vg.addr, "POST", "/api/v1/chat?x=1", &[("x-veilgate-token", token)], b"{}").await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-veilgate-transport"), Some("fetch"));
            assert_eq!(r.json()["version"], want, "ALPN through the exit, TLS end to end");
        }
        let asked = tor.asked();
        let seen: Vec<_> = asked.iter().map(|a| (a.atyp, a.host.as_str(), a.user.as_deref())).collect();
        assert_eq!(
            seen,
            [(3, "localhost", Some("veilgate-alice")), (3, "localhost", Some("veilgate-bob"))],
            "names unresolved, one identity per client"
        );
        let got = origin.seen();
        assert_eq!((got.len(), got[0].path.as_str()), (2, "/v1/chat?x=1"));
    }

    // Plain HTTP through a CONNECT exit is a CONNECT too (never a forward
    // proxy's absolute-form request, which a proxy could annotate), and a
    // dead exit is its 502 — never reqwest's direct connection.
    let origin = RawOrigin::json("{\"plain\":true}").await;
    let office = Proxy::http_connect(names(origin.addr), Mode::Relay).await;
    let (_dead_held, dead) = crate::support::refused_addr();
    let vg = Veilgate::start(&format!(
        "[egress.office]\nhttp_connect = \"{}\"\n[egress.dead]\nsocks5 = \"{dead}\"\n\
         [presets.plain]\ntargets = [\"http://{SECRET_NAME}:8081\"]\nforce_fetch = true\negress = \"office\"\n\
         [presets.gone]\ntargets = [\"http://{SECRET_NAME}:8081\"]\nforce_fetch = true\negress = \"dead\"\n",
        office.addr
    ))
    .await;
    let r = send(vg.addr, "GET", "/plain/v1/models", &[], b"").await;
    assert_eq!((r.status, r.text()), (200, "{\"plain\":true}".to_owned()));
    assert_eq!(office.asked()[0].host, SECRET_NAME);
    let seen = origin.only_request();
    assert_eq!(seen.request_line(), "GET /v1/models HTTP/1.1");
    assert_eq!(seen.header("host").as_deref(), Some(&*format!("{SECRET_NAME}:8081")));
    let body = send(vg.addr, "GET", "/gone/v1/models", &[], b"").await.assert_proxy_error(502);
    assert!(body["error"]["message"].as_str().unwrap().contains("egress dead"), "{body}");
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn several_exits_per_host_and_the_one_a_client_asks_for() {
    // Every answer closes its connection: each request asks an exit anew.
    let origin =
        RawOrigin::start(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_vec()).await;
    let a = Proxy::socks5(names(origin.addr), false, Mode::Relay).await;
    let b = Proxy::socks5(names(origin.addr), false, Mode::Relay).await;
    let vg = Veilgate::start(&format!(
        "[egress.a]\nsocks5 = \"{}\"\n[egress.b]\nsocks5 = \"{}\"\n\
         [presets.two]\ntargets = [\"http://{SECRET_NAME}\"]\negress = [\"a\", \"b\"]\n",
        a.addr, b.addr
    ))
    .await;
    for n in ["0", "1", "3", "4"] {
        let reply = send(vg.addr, "GET", "/two/x", &[("x-veilgate-exit", n)], b"").await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!((a.asked().len(), b.asked().len()), (2, 2), "exit N mod 2");
    assert!(origin.requests().iter().all(|c| c.header("x-veilgate-exit").is_none()), "never forwarded");
    // Without asking, one host always takes the same exit.
    let before = (a.asked().len(), b.asked().len());
    for _ in 0..4 {
        send(vg.addr, "GET", "/two/y", &[], b"").await;
    }
    let after = (a.asked().len() - before.0, b.asked().len() - before.1);
    assert!(after == (4, 0) || after == (0, 4), "{after:?}");
}

#[tokio::test]
async fn the_numeric_route_picks_its_exit() {
    use base64::Engine;
    let origin =
        RawOrigin::start(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_vec()).await;
    let a = Proxy::socks5(names(origin.addr), false, Mode::Relay).await;
    let b = Proxy::socks5(names(origin.addr), false, Mode::Relay).await;
    let vg = Veilgate::start(&format!(
        "[egress.a]\nsocks5 = \"{}\"\n[egress.b]\nsocks5 = \"{}\"\n[upstream]\negress = [\"a\", \"b\"]\n",
        a.addr, b.addr
    ))
    .await;
    let base = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("http://{SECRET_NAME}:8081/base"));
    for n in [1, 3, 2] {
        let reply = send(vg.addr, "GET", &format!("/{TOKEN}/{n}/{base}/v1/models?x=1"), &[], b"").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!((a.asked().len(), b.asked().len()), (1, 2), "exit N mod 2");
    assert_eq!(b.asked()[0].host, SECRET_NAME);
    assert!(origin.requests().iter().all(|c| c.target() == "/base/v1/models?x=1"));
    let bad = send(vg.addr, "GET", &format!("/{TOKEN}/1/%%%/x"), &[], b"").await;
    bad.assert_proxy_error(400);
}

#[tokio::test]
async fn unknown_exit_names_are_start_up_errors() {
    for (toml, named) in [
        ("[upstream]\negress = \"nowhere\"", "upstream.egress: no [egress.nowhere]"),
        ("[presets.openai]\negress = [\"direct\", \"gone\"]", "presets.openai.egress: no [egress.gone]"),
        ("[egress.x]\nsocks5 = \"127.0.0.1\"", "egress.x"),
        ("[egress.x]\nsocks5 = \"127.0.0.1:1\"\nhttp_connect = \"127.0.0.1:2\"", "exactly one"),
        ("[egress.x]\nsocks5 = \"127.0.0.1:1\"\nusername = \"u\"", "both username and password"),
        ("[egress.x]\nsocks5 = \"127.0.0.1:1\"\nisolate = \"client\"\nusername = \"u\"\npassword = \"p\"", "isolate"),
        ("[egress.direct]\nbind = \"127.0.0.1\"", "cannot be \"direct\""),
    ] {
        let raw = veilgate::config::RawConfig::from_toml(toml).unwrap();
        let e = veilgate::config::Config::from_raw(raw, &|_| None).unwrap_err().to_string();
        assert!(e.contains(named), "{toml}: {e}");
    }
}

/// A running `microsocks` on a free loopback port; `None` when it is not
/// installed (locally; `.ci/run` installs it).
async fn microsocks() -> Option<(tokio::process::Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = tokio::process::Command::new("microsocks")
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(child) = child else {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("VEILGATE_REQUIRE_SDKS").is_some();
        assert!(!required, "microsocks is needed; .ci/run installs it");
        eprintln!("skipping: microsocks is not installed");
        return None;
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "microsocks did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((child, addr))
}

#[tokio::test]
async fn a_real_socks5_server_carries_tls_and_a_websocket_tunnel() {
    let Some((_microsocks, socks)) = microsocks().await else { return };
    let ca = TestCa::new();
    let https = RawOrigin::scripted_tls(&ca, |_| vec![Step::Write(json_response("{\"via\":\"microsocks\"}"))]).await;
    let ws = WsOrigin::start(Behavior::Echo, None).await;
    let vg = Veilgate::start(&format!(
        "[egress.tor]\nsocks5 = \"{socks}\"\n[upstream]\negress = \"tor\"\nextra_ca_file = {:?}\n\
         [presets.api]\ntargets = [\"https://localhost:{}\"]\n\
         [presets.echo]\ntargets = [\"http://localhost:{}\"]\n",
        ca.ca_file,
        https.addr.port(),
        ws.addr.port()
    ))
    .await;
    let reply = send(vg.addr, "GET", "/api/v1/models", &[], b"").await;
    assert_eq!((reply.status, reply.text()), (200, "{\"via\":\"microsocks\"}".into()));
    assert_eq!(https.only_request().sni.as_deref(), Some("localhost"));

    let req = format!("ws://{}/echo/socket", vg.addr).into_client_request().unwrap();
    let tcp = tokio::net::TcpStream::connect(vg.addr).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(req, tcp).await.expect("tunnel through microsocks");
    client.send(Message::text("through the exit")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), client.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, Message::text("through the exit"));
}

#[tokio::test]
async fn the_topology_metrics_and_dashboard_show_each_exit() {
    let origin = RawOrigin::json("{}").await;
    let proxy = Proxy::socks5(names(origin.addr), false, Mode::Relay).await;
    let (_dead_held, dead) = crate::support::refused_addr();
    let exits = |order: [&str; 3]| {
        let table = |name: &str| match name {
            "tor" => format!("[egress.tor]\nsocks5 = \"{}\"\n", proxy.addr),
            "office" => format!("[egress.office]\nhttp_connect = \"{dead}\"\nproxy_authorization = \"u:p\"\n"),
            _ => "[egress.eth]\nbind = \"127.0.0.1\"\n".to_owned(),
        };
        order.iter().map(|n| table(n)).collect::<String>()
    };
    let presets = format!(
        "[presets.a]\ntargets = [\"http://{SECRET_NAME}\"]\negress = \"tor\"\n\
         [presets.b]\ntargets = [\"http://{}\"]\negress = \"office\"\n",
        origin.addr
    );
    let vg = Veilgate::start(&format!("{}{presets}", exits(["tor", "office", "eth"]))).await;
    let topology = |headers: Vec<(&'static str, String)>| {
        let addr = vg.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(addr, "GET", "/internal/v1/topology", &h, b"").await
        }
    };
    topology(vec![]).await.assert_proxy_error(401);
    let t = topology(vec![("authorization", format!("Bearer {TOKEN}"))]).await.json();
    assert_eq!(t["schemaVersion"], 1);
    assert_eq!(t["workerCount"], 3);
    let kinds: Vec<(u64, &str, &str, &str)> = t["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["name"].as_str().unwrap(),
                p["kind"].as_str().unwrap(),
                p["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [(0, "tor", "socks5", "active"), (1, "office", "http_connect", "active"), (2, "eth", "bind", "active")]
    );
    let id = t["topologyId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");

    assert_eq!(send(vg.addr, "GET", "/a/x", &[], b"").await.status, 200);
    send(vg.addr, "GET", "/b/x", &[], b"").await.assert_proxy_error(502);
    let t = topology(vec![("x-internal-auth", TOKEN.to_owned())]).await.json();
    assert_eq!(t["proxies"][1]["status"], "failing", "{t}");
    assert_eq!(t["proxies"][0]["status"], "active");
    assert_eq!(t["topologyId"], id.as_str(), "nothing about the exits changed");
    let metrics = send(vg.addr, "GET", "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))], b"").await.text();
    for line in [
        "veilgate_egress_connections_total{egress=\"tor\",result=\"ok\"} 1",
        "veilgate_egress_connections_total{egress=\"office\",result=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let page = send(vg.addr, "GET", "/", &[], b"").await.text();
    assert!(page.contains(r#""name":"office","status":"failing""#) || page.contains(r#""status":"failing""#), "{page}");
    assert!(!page.contains("u:p") && !metrics.contains("u:p"));

    // Another order is another topology; the same exits give the same id.
    let other = Veilgate::start(&format!("{}{presets}", exits(["office", "tor", "eth"]))).await;
    let same = Veilgate::start(&format!("{}{presets}", exits(["tor", "office", "eth"]))).await;
    let id_of = |vg: &Veilgate| {
        let addr = vg.addr;
        async move {
            let t = send(addr, "GET", "/internal/v1/topology", &[("x-veilgate-token", TOKEN)], b"").await.json();
            t["topologyId"].as_str().unwrap().to_owned()
        }
    };
    assert_ne!(id_of(&other).await, id);
    assert_eq!(id_of(&same).await, id);
}
