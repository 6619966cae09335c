//! Sans-IO decoders for upstream response bodies: `content-length`,
//! `transfer-encoding: chunked` (trailers read and discarded) and
//! read-to-close.
//!
//! [`BodyDecoder::decode`] takes bytes off the front of a buffer and answers
//! with a slice of body data (`Ok(Some(bytes))`, sliced from the buffer
//! without copying), *need more* (`Ok(None)` while not [`done`]) or an
//! error. [`BodyDecoder::eof`] says whether the connection closing at this
//! point ends the body cleanly or cuts it short.
//!
//! [`done`]: BodyDecoder::is_done

use bytes::{Buf, Bytes, BytesMut};

use super::parse::Framing;

/// Longest chunk-size line (size, extensions, CRLF) we buffer.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer section we read (and throw away).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most hex digits in a chunk size (fits a `u64`).
const MAX_SIZE_DIGITS: usize = 16;

/// Why a body could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid chunk size line")]
    BadChunkSize,
    #[error("chunk size line longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    #[error("chunk data not followed by CRLF")]
    BadChunkEnd,
    #[error("trailer section larger than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
    #[error("upstream body ended early")]
    Truncated,
}

/// State of the chunked decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// Reading `hex-size [; ext] CRLF`.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line; the count
    /// of trailer bytes read so far.
    Trailers(usize),
}

/// The body decoder of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyDecoder {
    Length(u64),
    Chunked(ChunkedState),
    Close,
    Done,
}

/// Opaque chunked state (kept public only through [`BodyDecoder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedState(Chunked);

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        match framing {
            Framing::Empty | Framing::Length(0) => BodyDecoder::Done,
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::Chunked(ChunkedState(Chunked::Size)),
            Framing::Close => BodyDecoder::Close,
        }
    }

    /// True once the body has ended by its own framing.
    pub fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    /// Bytes of body still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(n) => Some(*n),
            BodyDecoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body data off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        match self {
            BodyDecoder::Done => Ok(None),
            BodyDecoder::Close => Ok((!buf.is_empty()).then(|| buf.split().freeze())),
            BodyDecoder::Length(rem) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*rem).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                *rem -= n as u64;
                if *rem == 0 {
                    *self = BodyDecoder::Done;
                }
                Ok(Some(data))
            }
            BodyDecoder::Chunked(ChunkedState(state)) => {
                let out = decode_chunked(state, buf);
                if let Ok(None) = out
                    && *state == Chunked::Trailers(usize::MAX)
                {
                    *self = BodyDecoder::Done;
                }
                out
            }
        }
    }

    /// The connection closed (cleanly) here: does the body end or is it cut
    /// short? A close-delimited body over TLS must be checked for
    /// `close_notify` by the caller before it calls this.
    pub fn eof(&mut self) -> Result<(), DecodeError> {
        match self {
            BodyDecoder::Done => Ok(()),
            BodyDecoder::Close => {
                *self = BodyDecoder::Done;
                Ok(())
            }
            _ => Err(DecodeError::Truncated),
        }
    }
}

/// One step of the chunked decoder. `Trailers(usize::MAX)` marks the end.
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(nl) = memchr(b'\n', buf) else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(DecodeError::ChunkLineTooLong);
                    }
                    return Ok(None);
                };
                if nl + 1 > MAX_CHUNK_LINE {
                    return Err(DecodeError::ChunkLineTooLong);
                }
                let size = chunk_size(&buf[..nl])?;
                buf.advance(nl + 1);
                *state = if size == 0 { Chunked::Trailers(0) } else { Chunked::Data(size) };
            }
            Chunked::Data(rem) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(rem).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = rem - n as u64;
                *state = if left == 0 { Chunked::DataEnd } else { Chunked::Data(left) };
                return Ok(Some(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|&b| b != b'\r') {
                        return Err(DecodeError::BadChunkEnd);
                    }
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(DecodeError::BadChunkEnd);
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers(usize::MAX) => return Ok(None),
            Chunked::Trailers(seen) => {
                let Some(nl) = memchr(b'\n', buf) else {
                    if seen + buf.len() > MAX_TRAILER_BYTES {
                        return Err(DecodeError::TrailersTooLarge);
                    }
                    return Ok(None);
                };
                let seen = seen + nl + 1;
                if seen > MAX_TRAILER_BYTES {
                    return Err(DecodeError::TrailersTooLarge);
                }
                let line_is_empty = &buf[..nl] == b"\r";
                if nl == 0 || buf[nl - 1] != b'\r' {
                    return Err(DecodeError::BadChunkSize);
                }
                buf.advance(nl + 1);
                *state = Chunked::Trailers(if line_is_empty { usize::MAX } else { seen });
                if line_is_empty {
                    return Ok(None);
                }
            }
        }
    }
}

/// Parses `hex-size [BWS ; ext…] CR` (the LF already cut off).
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let line = line.strip_suffix(b"\r").ok_or(DecodeError::BadChunkSize)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return Err(DecodeError::BadChunkSize);
    }
    let rest = &line[digits..];
    // Whitespace after the size is tolerated (some servers pad it).
    let rest = rest.trim_ascii_start();
    let rest_ok = rest.is_empty() || rest.first() == Some(&b';');
    if !rest_ok || rest.iter().any(|&b| b == b'\r' || b == 0) {
        return Err(DecodeError::BadChunkSize);
    }
    let mut n: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(DecodeError::BadChunkSize)?;
        n = n.checked_mul(16).ok_or(DecodeError::BadChunkSize)? | u64::from(d);
    }
    Ok(n)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the body and whether
    /// the decoder finished, or the first error.
    fn feed(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, bool), DecodeError> {
        let mut d = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(data) = d.decode(&mut buf)? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, d.is_done()))
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n7;ext=\"a\"\r\n, world\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
    const CHUNKED_BODY: &[u8] = b"hello, worldabcdefghijklmnopqrstuvwxyz";

    #[test]
    fn chunked_any_split() {
        for step in [1, 2, 3, 7, 1000] {
            assert_eq!(feed(Framing::Chunked, CHUNKED, step), Ok((CHUNKED_BODY.to_vec(), true)), "step {step}");
        }
    }

    #[test]
    fn chunked_every_prefix_needs_more_or_agrees() {
        for i in 0..CHUNKED.len() {
            let (body, done) = feed(Framing::Chunked, &CHUNKED[..i], 1000).unwrap();
            assert!(!done, "prefix {i} cannot be done");
            assert!(CHUNKED_BODY.starts_with(&body), "prefix {i} gives a prefix of the body");
            let mut d = BodyDecoder::new(Framing::Chunked);
            let mut buf = BytesMut::from(&CHUNKED[..i]);
            while d.decode(&mut buf).unwrap().is_some() {}
            assert_eq!(d.eof(), Err(DecodeError::Truncated), "EOF after prefix {i} is a truncation");
        }
    }

    #[test]
    fn chunked_leaves_following_bytes() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut d = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&input[..]);
        while d.decode(&mut buf).unwrap().is_some() {}
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn chunked_errors() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"zz\r\nhello\r\n0\r\n\r\n", DecodeError::BadChunkSize),
            (b"-5\r\nhello\r\n", DecodeError::BadChunkSize),
            (b"5\nhello\r\n", DecodeError::BadChunkSize),
            (b"5 x\r\nhello\r\n", DecodeError::BadChunkSize),
            (b"\r\n", DecodeError::BadChunkSize),
            (b"11111111111111111\r\n", DecodeError::BadChunkSize),
            (b"5\r\nhelloXX", DecodeError::BadChunkEnd),
            (b"5\r\nhello\rX", DecodeError::BadChunkEnd),
            (b"0\r\nbad trailer\n", DecodeError::BadChunkSize),
        ];
        for (input, want) in cases {
            for step in [1, 1000] {
                assert_eq!(
                    feed(Framing::Chunked, input, step),
                    Err(*want),
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert_eq!(feed(Framing::Chunked, &long, 1000), Err(DecodeError::ChunkLineTooLong));
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'e', MAX_CHUNK_LINE + 1));
        assert_eq!(feed(Framing::Chunked, &long_ext, 64), Err(DecodeError::ChunkLineTooLong));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..1000 {
            trailers.extend_from_slice(b"x-a: bbbbbbbbbbbbbbbbbbbbbbbbb\r\n");
        }
        assert_eq!(feed(Framing::Chunked, &trailers, 100), Err(DecodeError::TrailersTooLarge));
    }

    #[test]
    fn max_chunk_size_is_accepted() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(d.decode(&mut buf).unwrap().as_deref(), Some(&b"ab"[..]));
    }

    #[test]
    fn length_and_close() {
        assert_eq!(feed(Framing::Length(5), b"hello", 1), Ok((b"hello".to_vec(), true)));
        assert_eq!(feed(Framing::Length(5), b"hel", 1), Ok((b"hel".to_vec(), false)));
        let mut d = BodyDecoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"helloEXTRA"[..]);
        assert_eq!(d.decode(&mut buf).unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"EXTRA");
        let mut short = BodyDecoder::new(Framing::Length(5));
        assert_eq!(short.eof(), Err(DecodeError::Truncated));
        assert_eq!(feed(Framing::Close, b"anything", 3), Ok((b"anything".to_vec(), false)));
        let mut close = BodyDecoder::new(Framing::Close);
        assert_eq!(close.eof(), Ok(()));
        assert!(close.is_done());
        assert!(BodyDecoder::new(Framing::Empty).is_done());
        assert!(BodyDecoder::new(Framing::Length(0)).is_done());
    }
}
