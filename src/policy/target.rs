//! Where a request may go: the host/port grammar of generic routes and
//! preset targets, and the "is this address globally routable" check.
//!
//! Pure functions on strings and addresses. Resolving names and connecting
//! is the connector's job (`upstream::connect`); it calls [`is_global`] on
//! every address it is about to connect to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// `http` or `https`. WebSocket schemes map onto these (`ws` ≡ `http`,
/// `wss` ≡ `https`); the `Upgrade` header alone decides whether a request
/// becomes a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// Parses a route's scheme segment: `http|https|ws|wss`, any case,
    /// with an optional trailing `:`.
    pub fn from_segment(segment: &str) -> Option<Scheme> {
        let s = segment.strip_suffix(':').unwrap_or(segment);
        if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("ws") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("wss") {
            Some(Scheme::Https)
        } else {
            None
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A validated upstream host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A lowercase DNS name: LDH labels (punycode allowed), no trailing dot.
    /// Shared: an origin is cloned into every request and pool key.
    Name(Arc<str>),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Scheme, host and port: what a connection is opened to and what the
/// keep-alive pool is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
}

impl Origin {
    /// The `Host` header value: `:port` only when it is not the scheme's
    /// default.
    pub fn host_header(&self) -> String {
        let mut out = Vec::with_capacity(self.host_len_hint());
        self.put_host_header(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the `Host` header value to `out`, without a formatter (it
    /// is written on every request).
    pub fn put_host_header(&self, out: &mut impl bytes::BufMut) {
        match &self.host {
            Host::Name(n) => out.put_slice(n.as_bytes()),
            Host::V4(a) => {
                // Written into one small buffer, put once (a put per digit
                // group cost more than the rest of the head's host line).
                let mut text = [0u8; 15];
                let mut len = 0;
                for (i, octet) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    if octet >= 100 {
                        text[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        text[len] = b'0' + octet / 10 % 10;
                        len += 1;
                    }
                    text[len] = b'0' + octet % 10;
                    len += 1;
                }
                out.put_slice(&text[..len]);
            }
            Host::V6(a) => out.put_slice(format!("[{a}]").as_bytes()),
        }
        if self.port != self.scheme.default_port() {
            out.put_u8(b':');
            crate::decimal::put(out, u64::from(self.port));
        }
    }

    /// Room for the `Host` header value (exact for names, enough for addresses).
    pub fn host_len_hint(&self) -> usize {
        let host = match &self.host {
            Host::Name(n) => n.len(),
            Host::V4(_) => 15,
            Host::V6(_) => 41,
        };
        host + 6
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host_header())
    }
}

/// Why a host segment was refused. Messages name the rule, never echo the
/// input (it may hold a secret pasted into the wrong place).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host may not contain userinfo ('@')")]
    Userinfo,
    #[error("host may not contain '#', '\\', '%' or a zone ID")]
    ForbiddenChar,
    #[error("port must be a number from 1 to 65535")]
    BadPort,
    #[error("IPv6 host must be a valid address in brackets")]
    BadIpv6,
    #[error("numeric host must be a dotted-quad IPv4 address")]
    BadIpv4,
    #[error("host must be a DNS name (letters, digits, '-', '.'; no trailing dot)")]
    BadName,
}

/// Parses `host[:port]` as it appears in a generic route or a preset URL.
///
/// Uppercase ASCII in a DNS name is folded to lowercase: names are
/// case-insensitive and the upstream gets the canonical form.
pub fn parse_authority(s: &str) -> Result<(Host, Option<u16>), HostError> {
    if s.is_empty() {
        return Err(HostError::Empty);
    }
    if s.contains('@') {
        return Err(HostError::Userinfo);
    }
    if s.contains(['#', '\\', '%']) {
        return Err(HostError::ForbiddenChar);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::BadIpv6)?;
        let addr: Ipv6Addr = rest[..end].parse().map_err(|_| HostError::BadIpv6)?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(parse_port(after.strip_prefix(':').ok_or(HostError::BadIpv6)?)?),
        };
        (Host::V6(addr), port)
    } else {
        let (name, port) = match s.rsplit_once(':') {
            Some((name, port)) => (name, Some(parse_port(port)?)),
            None => (s, None),
        };
        (parse_host_name(name)?, port)
    };
    Ok((host, port))
}

fn parse_port(s: &str) -> Result<u16, HostError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::BadPort),
        Ok(p) => Ok(p),
    }
}

fn parse_host_name(s: &str) -> Result<Host, HostError> {
    if s.is_empty() {
        return Err(HostError::Empty);
    }
    if s.contains(':') {
        // A bare IPv6 address or a second colon.
        return Err(HostError::BadIpv6);
    }
    let last = s.rsplit('.').next().unwrap_or(s);
    let looks_numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit()) || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x")));
    if looks_numeric {
        // WHATWG treats such hosts as IPv4 in any of several spellings
        // (`0x7f.1`, `2130706433`); only the unambiguous dotted quad is
        // accepted, so what we check is what a resolver would connect to.
        let addr: Ipv4Addr = s.parse().map_err(|_| HostError::BadIpv4)?;
        return Ok(Host::V4(addr));
    }
    if s.len() > 253 {
        return Err(HostError::BadName);
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(HostError::BadName);
        }
    }
    Ok(Host::Name(s.to_ascii_lowercase().into()))
}

/// An absolute `http(s)://host[:port][/path][?query]` URL from the
/// operator (a preset target, `default_dst_url`), split into its origin and
/// its path-and-query (no trailing `/` kept on a bare path prefix).
pub fn parse_url(s: &str) -> Result<(Origin, String), String> {
    let (scheme, rest) = s.split_once("://").ok_or_else(|| "must be an absolute http:// or https:// URL".to_owned())?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err("scheme must be http or https".to_owned()),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let (host, port) = parse_authority(authority).map_err(|e| e.to_string())?;
    if path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err("path may not contain spaces, control bytes or '#'".to_owned());
    }
    let path = match path.strip_prefix('?') {
        Some(q) => format!("/?{q}"),
        None => path.to_owned(),
    };
    let origin = Origin { scheme, port: port.unwrap_or(scheme.default_port()), host };
    Ok((origin, path))
}

/// True when `addr` is globally routable, i.e. not loopback, private,
/// link-local (the cloud metadata address included), CGNAT, unique-local,
/// multicast, unspecified, reserved, benchmarking or documentation space —
/// also when such an IPv4 address hides inside an IPv4-mapped, IPv4-compatible,
/// NAT64 or 6to4 IPv6 address.
pub fn is_global(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => is_global_v4(a),
        IpAddr::V6(a) => is_global_v6(a),
    }
}

fn is_global_v4(a: Ipv4Addr) -> bool {
    let [b0, b1, b2, _] = a.octets();
    let refused = b0 == 0                                   // 0/8 "this network"
        || b0 == 10                                         // private
        || b0 == 127                                        // loopback
        || (b0 == 100 && (64..128).contains(&b1))           // CGNAT 100.64/10
        || (b0 == 169 && b1 == 254)                         // link-local, metadata
        || (b0 == 172 && (16..32).contains(&b1))            // private
        || (b0 == 192 && b1 == 0 && b2 == 0)                // IETF protocol assignments
        || (b0 == 192 && b1 == 0 && b2 == 2)                // TEST-NET-1
        || (b0 == 192 && b1 == 88 && b2 == 99)              // 6to4 relay anycast
        || (b0 == 192 && b1 == 168)                         // private
        || (b0 == 198 && (b1 == 18 || b1 == 19))            // benchmarking 198.18/15
        || (b0 == 198 && b1 == 51 && b2 == 100)             // TEST-NET-2
        || (b0 == 203 && b1 == 0 && b2 == 113)              // TEST-NET-3
        || b0 >= 224; // multicast 224/4, reserved 240/4, broadcast
    !refused
}

fn is_global_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    // Embedded IPv4: mapped ::ffff:a.b.c.d, compatible ::a.b.c.d,
    // NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16.
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    if s[..6] == [0; 6] {
        // ::/96 holds :: and ::1 and the deprecated IPv4-compatible form.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return !(a.is_unspecified() || a.is_loopback()) && is_global_v4(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        if s[2] == 1 {
            return false; // local-use NAT64 prefix
        }
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_global_v4(v4);
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_global_v4(v4);
    }
    let refused = (s[0] & 0xfe00) == 0xfc00                 // unique-local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80                        // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0                        // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00                        // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8)               // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000)                // documentation 3fff::/20
        || (s[0] == 0x2001 && s[1] < 0x200)                 // IETF protocol assignments
        || s[0] == 0x0100 && s[1..4] == [0; 3]; // discard-only 100::/64
    !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_grammar() {
        let ok: &[(&str, Host, Option<u16>)] = &[
            ("api.openai.com", Host::Name("api.openai.com".into()), None),
            ("API.OpenAI.com:8443", Host::Name("api.openai.com".into()), Some(8443)),
            ("xn--bcher-kva.example", Host::Name("xn--bcher-kva.example".into()), None),
            ("localhost:1", Host::Name("localhost".into()), Some(1)),
            ("1.2.3.4", Host::V4(Ipv4Addr::new(1, 2, 3, 4)), None),
            ("1.2.3.4:65535", Host::V4(Ipv4Addr::new(1, 2, 3, 4)), Some(65535)),
            ("[2001:db8::1]", Host::V6("2001:db8::1".parse().unwrap()), None),
            ("[::1]:8080", Host::V6(Ipv6Addr::LOCALHOST), Some(8080)),
        ];
        for (input, host, port) in ok {
            assert_eq!(parse_authority(input), Ok((host.clone(), *port)), "{input}");
        }
        let bad: &[(&str, HostError)] = &[
            ("", HostError::Empty),
            ("user@host.com", HostError::Userinfo),
            ("user:pw@host.com", HostError::Userinfo),
            ("host.com#frag", HostError::ForbiddenChar),
            ("host\\evil.com", HostError::ForbiddenChar),
            ("%65vil.com", HostError::ForbiddenChar),
            ("[fe80::1%25eth0]", HostError::ForbiddenChar),
            ("host.com:0", HostError::BadPort),
            ("host.com:65536", HostError::BadPort),
            ("host.com:", HostError::BadPort),
            ("host.com:+80", HostError::BadPort),
            ("host.com:8o", HostError::BadPort),
            ("[::1", HostError::BadIpv6),
            ("[::1]x", HostError::BadIpv6),
            ("[nope]", HostError::BadIpv6),
            ("::1", HostError::BadIpv6),
            ("2130706433", HostError::BadIpv4),
            ("0x7f.1", HostError::BadIpv4),
            ("127.1", HostError::BadIpv4),
            ("127.000.0.1", HostError::BadIpv4),
            ("1.2.3.4.5", HostError::BadIpv4),
            ("host.com.", HostError::BadName),
            ("-host.com", HostError::BadName),
            ("ho_st.com", HostError::BadName),
            ("a..b", HostError::BadName),
            ("ex ample.com", HostError::BadName),
        ];
        for (input, err) in bad {
            assert_eq!(parse_authority(input), Err(*err), "{input}");
        }
    }

    #[test]
    fn host_header_has_port_only_when_not_default() {
        let o = |scheme, port| Origin { scheme, host: Host::Name("a.b".into()), port };
        assert_eq!(o(Scheme::Https, 443).host_header(), "a.b");
        assert_eq!(o(Scheme::Http, 80).host_header(), "a.b");
        assert_eq!(o(Scheme::Http, 443).host_header(), "a.b:443");
        let v6 = Origin { scheme: Scheme::Http, host: Host::V6(Ipv6Addr::LOCALHOST), port: 81 };
        assert_eq!(v6.host_header(), "[::1]:81");
        for octets in [[0, 9, 10, 99], [100, 199, 200, 255], [127, 0, 0, 1], [1, 22, 255, 0]] {
            let a = Ipv4Addr::from(octets);
            let v4 = Origin { scheme: Scheme::Http, host: Host::V4(a), port: 8080 };
            assert_eq!(v4.host_header(), format!("{a}:8080"), "written as Display writes it");
        }
    }

    #[test]
    fn operator_urls() {
        let (o, p) = parse_url("https://api.groq.com/openai").unwrap();
        assert_eq!(o.to_string(), "https://api.groq.com");
        assert_eq!(p, "/openai");
        let (o, p) = parse_url("http://127.0.0.1:9000").unwrap();
        assert_eq!((o.host, o.port, p.as_str()), (Host::V4(Ipv4Addr::LOCALHOST), 9000, ""));
        let (_, p) = parse_url("https://httpbin.org/get?a=1").unwrap();
        assert_eq!(p, "/get?a=1");
        for bad in ["ftp://x.org", "x.org/path", "https://", "https://a b", "https://x.org/a b"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scheme_segments() {
        for (s, want) in [
            ("https", Some(Scheme::Https)),
            ("HTTPS:", Some(Scheme::Https)),
            ("wss", Some(Scheme::Https)),
            ("Ws:", Some(Scheme::Http)),
            ("http", Some(Scheme::Http)),
            ("ftp", None),
            ("https::", None),
            ("", None),
        ] {
            assert_eq!(Scheme::from_segment(s), want, "{s}");
        }
    }

    #[test]
    fn global_addresses() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
        ];
        for a in refused {
            assert!(!is_global(a.parse().unwrap()), "{a} must be refused");
        }
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2a00:1450:4001::200e",
        ];
        for a in allowed {
            assert!(is_global(a.parse().unwrap()), "{a} must be allowed");
        }
    }
}
