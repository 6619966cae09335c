//! The DNS wire format (RFC 1035) as far as DNS over HTTPS (RFC 8484)
//! needs it: an A or AAAA query for one name, and the addresses and TTLs of
//! the answer. Pure and total: any bytes give a value or an error, never a
//! panic (fuzzed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Query types veilgate asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    A,
    Aaaa,
}

impl Kind {
    fn code(self) -> u16 {
        match self {
            Kind::A => 1,
            Kind::Aaaa => 28,
        }
    }
}

/// Why an answer could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the name is not a valid DNS name")]
    BadName,
    #[error("the DNS answer is truncated")]
    Truncated,
    #[error("the DNS answer is malformed ({0})")]
    Malformed(&'static str),
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    #[error("the DNS server answered with rcode {0}")]
    Rcode(u8),
}

/// An A or AAAA query for `name` with id 0 (RFC 8484 §4.1: cache-friendly)
/// and recursion desired.
pub fn query(name: &str, kind: Kind) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    encode_name(name, &mut out)?;
    out.extend_from_slice(&kind.code().to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    Ok(out)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(WireError::BadName);
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(WireError::BadName);
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// The addresses an answer gives, each with its TTL in seconds (records of
/// other types, such as CNAMEs on the way, are skipped).
pub fn answers(msg: &[u8]) -> Result<Vec<(IpAddr, u32)>, WireError> {
    let header = msg.get(..12).ok_or(WireError::Truncated)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & 0x8000 == 0 {
        return Err(WireError::Malformed("not a response"));
    }
    if flags & 0x0200 != 0 {
        return Err(WireError::Truncated);
    }
    match (flags & 0x000f) as u8 {
        0 => {}
        3 => return Err(WireError::NxDomain),
        rcode => return Err(WireError::Rcode(rcode)),
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let (questions, records) = (count(4), count(6));
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)?;
        at = at.checked_add(4).filter(|&a| a <= msg.len()).ok_or(WireError::Truncated)?;
    }
    let mut out = Vec::new();
    for _ in 0..records {
        at = skip_name(msg, at)?;
        let fixed = msg.get(at..at + 10).ok_or(WireError::Truncated)?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        at += 10;
        let data = msg.get(at..at + len).ok_or(WireError::Truncated)?;
        at += len;
        if class != 1 {
            continue;
        }
        match (kind, len) {
            (1, 4) => out.push((IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])), ttl)),
            (28, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                out.push((IpAddr::V6(Ipv6Addr::from(a)), ttl));
            }
            (1 | 28, _) => return Err(WireError::Malformed("an address of the wrong length")),
            _ => {}
        }
    }
    Ok(out)
}

/// The index after the name at `at` (labels, or a compression pointer that
/// ends it).
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, WireError> {
    // A name has at most 127 labels; a longer run is a loop or garbage.
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(WireError::Truncated)?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => {
                msg.get(at + 1).ok_or(WireError::Truncated)?;
                return Ok(at + 2);
            }
            l if l & 0xc0 != 0 => return Err(WireError::Malformed("a label type that does not exist")),
            l => at += 1 + usize::from(l),
        }
    }
    Err(WireError::Malformed("a name that does not end"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query(name, A)` with `records` (type, data, ttl),
    /// each record's name a pointer to the question.
    pub(crate) fn answer(name: &str, rcode: u8, records: &[(u16, Vec<u8>, u32)]) -> Vec<u8> {
        let mut msg = query(name, Kind::A).unwrap();
        msg[2] = 0x81;
        msg[3] = 0x80 | rcode;
        msg[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (kind, data, ttl) in records {
            msg.extend_from_slice(&[0xc0, 12]);
            msg.extend_from_slice(&kind.to_be_bytes());
            msg.extend_from_slice(&1u16.to_be_bytes());
            msg.extend_from_slice(&ttl.to_be_bytes());
            msg.extend_from_slice(&(data.len() as u16).to_be_bytes());
            msg.extend_from_slice(data);
        }
        msg
    }

    #[test]
    fn queries_byte_for_byte() {
        assert_eq!(
            query("api.openai.com", Kind::A).unwrap(),
            [&[0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0][..], b"\x03api\x06openai\x03com\x00", &[0, 1, 0, 1]].concat()
        );
        assert_eq!(query("x.example.", Kind::Aaaa).unwrap()[12..], *b"\x01x\x07example\x00\x00\x1c\x00\x01");
        for bad in ["", ".", "a..b", &"a".repeat(64), &format!("{}.com", "a.".repeat(130)), "a b", "a/b"] {
            assert_eq!(query(bad, Kind::A), Err(WireError::BadName), "{bad:?}");
        }
    }

    #[test]
    fn answers_and_their_refusals() {
        let cname = (5u16, b"\x03www\x07example\x00".to_vec(), 60);
        let a = (1u16, vec![93, 184, 216, 34], 300);
        let aaaa = (28u16, vec![0x26, 0x06, 0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 30);
        let msg = answer("api.example", 0, &[cname, a, aaaa.clone()]);
        let got = answers(&msg).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("93.184.216.34".parse().unwrap(), 300));
        assert_eq!(got[1].1, 30);
        assert_eq!(answers(&answer("nx.example", 3, &[])), Err(WireError::NxDomain));
        assert_eq!(answers(&answer("x.example", 2, &[])), Err(WireError::Rcode(2)));
        for cut in [0, 5, 12, 20, msg.len() - 1] {
            assert!(answers(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut tc = msg.clone();
        tc[2] |= 0x02;
        assert_eq!(answers(&tc), Err(WireError::Truncated), "the TC bit");
        let mut query_only = msg.clone();
        query_only[2] &= 0x7f;
        assert!(answers(&query_only).is_err(), "a query is not an answer");
        let short = answer("x.example", 0, &[(1, vec![1, 2, 3], 5)]);
        assert!(matches!(answers(&short), Err(WireError::Malformed(_))));
        // A name that points at itself forever.
        let mut looped = answer("x.example", 0, &[]);
        looped[5] = 1;
        looped.truncate(12);
        looped.extend_from_slice(&[1, b'a'].repeat(200));
        assert!(answers(&looped).is_err());
    }
}
