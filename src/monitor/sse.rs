//! A pure, incremental parser for server-sent events (the WHATWG event
//! stream format): `data:` with or without a space, LF, CRLF or CR line
//! ends (a CRLF may be split across reads), comments, `event:`/`id:`,
//! multi-line data, events up to a size limit, UTF-8 split anywhere (bytes
//! are only decoded once a whole event is in).
//!
//! [`SseParser::push`] takes bytes as they arrive; [`SseParser::next_item`]
//! answers with a complete [`Item`] or `Ok(None)` (need more). Each item
//! keeps its raw bytes, so an event nobody changes is forwarded exactly as
//! it came.

use bytes::{Bytes, BytesMut};

/// Default limit on one event's size (raw bytes, all lines).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One complete block of the stream (everything up to a blank line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A block with at least one `data:` line.
    Event(Event),
    /// A block of comments or fields without data (a keep-alive): nothing
    /// to inspect, forwarded as it came.
    Other(Bytes),
}

/// A dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `event:` (absent means "message").
    pub event: Option<String>,
    /// The data lines joined with `\n`.
    pub data: String,
    pub id: Option<String>,
    /// The block exactly as received, blank line included.
    pub raw: Bytes,
    /// True when the block's lines ended with CRLF.
    pub crlf: bool,
}

/// Why the stream cannot be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("server-sent event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
    #[error("server-sent event is not valid UTF-8")]
    NotUtf8,
}

/// The incremental parser.
#[derive(Debug)]
pub struct SseParser {
    buf: BytesMut,
    /// Start of the current, unfinished line in `buf` (complete non-blank
    /// lines before it belong to the current block).
    line_start: usize,
    /// Where scanning for line ends resumes (bytes before it hold none).
    pos: usize,
    /// The last line of the previous block ended with a bare CR; a LF at
    /// the start of the next bytes belongs to it.
    skip_lf: bool,
    limit: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(limit: usize) -> SseParser {
        SseParser { buf: BytesMut::new(), line_start: 0, pos: 0, skip_lf: false, limit }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not form a complete block yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes every byte held (an unfinished block at the end of a stream),
    /// leaving the parser empty.
    pub fn take_pending(&mut self) -> Bytes {
        self.line_start = 0;
        self.pos = 0;
        self.skip_lf = false;
        self.buf.split().freeze()
    }

    /// The next complete block, if there is one.
    pub fn next_item(&mut self) -> Result<Option<Item>, SseError> {
        if self.skip_lf && !self.buf.is_empty() {
            self.skip_lf = false;
            if self.buf[0] == b'\n' {
                // The LF of a CRLF whose CR ended the previous block: handed
                // on by itself so the forwarded bytes stay identical.
                return Ok(Some(Item::Other(self.buf.split_to(1).freeze())));
            }
        }
        // Complete, non-blank lines before `line_start` belong to the current
        // block; look for the blank line that ends it.
        let mut line_start = self.line_start;
        let mut i = self.pos;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let end_len = match (b, self.buf.get(i + 1)) {
                (b'\r', Some(b'\n')) => 2,
                // A CR as the last byte of a non-blank line: wait, a LF may follow.
                (b'\r', None) if i != line_start => break,
                _ => 1,
            };
            if i == line_start {
                let total = i + end_len;
                // A blank line that is a lone CR at the end: a LF in the next
                // read still belongs to it.
                let lone_cr_at_end = b == b'\r' && end_len == 1 && total == self.buf.len();
                let block = self.buf.split_to(total).freeze();
                self.line_start = 0;
                self.pos = 0;
                self.skip_lf = lone_cr_at_end;
                if block.len() > self.limit {
                    return Err(SseError::EventTooLarge { limit: self.limit });
                }
                return parse_block(block).map(Some);
            }
            i += end_len;
            line_start = i;
        }
        self.line_start = line_start;
        self.pos = i;
        self.check_limit()
    }

    fn check_limit(&self) -> Result<Option<Item>, SseError> {
        if self.buf.len() > self.limit {
            return Err(SseError::EventTooLarge { limit: self.limit });
        }
        Ok(None)
    }
}

/// Parses one block (its lines and the blank line that ends it).
fn parse_block(raw: Bytes) -> Result<Item, SseError> {
    let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
    let crlf = text.contains("\r\n");
    let mut data: Vec<&str> = Vec::new();
    let mut event = None;
    let mut id = None;
    for line in split_lines(text) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => data.push(value),
            "event" => event = Some(value.to_owned()),
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    if data.is_empty() {
        return Ok(Item::Other(raw));
    }
    let data = data.join("\n");
    Ok(Item::Event(Event { event, data, id, raw, crlf }))
}

/// Lines of a block, without their line ends (CRLF, LF or CR).
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") { 2 } else { (end < rest.len()) as usize };
        rest = &rest[end + skip..];
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], step: usize) -> Result<Vec<Item>, SseError> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            p.push(piece);
            while let Some(item) = p.next_item()? {
                out.push(item);
            }
        }
        Ok(out)
    }

    fn events(input: &[u8], step: usize) -> Vec<(Option<String>, String)> {
        all(input, step)
            .unwrap()
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some((e.event, e.data)),
                Item::Other(_) => None,
            })
            .collect()
    }

    const STREAM: &str = "data: {\"a\":1}\r\n\r\n: keepalive\r\n\r\ndata:{\"b\":\"über 日本語\"}\r\n\r\nevent: error\nid: 7\ndata: line1\ndata:\ndata: line3\n\ndata: cr\r\rdata: last\n\n";

    #[test]
    fn fields_and_line_ends() {
        let want = vec![
            (None, "{\"a\":1}".to_owned()),
            (None, "{\"b\":\"über 日本語\"}".to_owned()),
            (Some("error".to_owned()), "line1\n\nline3".to_owned()),
            (None, "cr".to_owned()),
            (None, "last".to_owned()),
        ];
        for step in [1, 2, 3, 5, 7, 1000] {
            assert_eq!(events(STREAM.as_bytes(), step), want, "step {step}");
        }
    }

    #[test]
    fn raw_bytes_are_kept_exactly() {
        for step in [1, 2, 3, 1000] {
            let mut joined = Vec::new();
            for item in all(STREAM.as_bytes(), step).unwrap() {
                match item {
                    Item::Event(e) => joined.extend_from_slice(&e.raw),
                    Item::Other(raw) => joined.extend_from_slice(&raw),
                }
            }
            assert_eq!(joined, STREAM.as_bytes(), "step {step}");
        }
        let items = all(STREAM.as_bytes(), 1000).unwrap();
        assert!(matches!(&items[0], Item::Event(e) if e.crlf));
        assert!(matches!(&items[1], Item::Other(raw) if &raw[..] == b": keepalive\r\n\r\n"));
        assert!(matches!(&items[3], Item::Event(e) if !e.crlf && e.id.as_deref() == Some("7")));
    }

    #[test]
    fn every_prefix_gives_a_prefix_of_the_events() {
        let whole = events(STREAM.as_bytes(), 1000);
        for i in 0..STREAM.len() {
            let got = events(&STREAM.as_bytes()[..i], 1000);
            assert!(whole.starts_with(&got), "prefix {i}");
        }
    }

    #[test]
    fn utf8_split_anywhere() {
        let text = "data: 你好，世界。こんにちは 안녕하세요 Привет ü\r\n\r\n";
        for step in 1..8 {
            assert_eq!(
                events(text.as_bytes(), step),
                vec![(None, "你好，世界。こんにちは 안녕하세요 Привет ü".to_owned())]
            );
        }
    }

    #[test]
    fn crlf_split_between_reads_is_one_line_end() {
        // "data: a\r" | "\n\r" | "\n" must be one event, not two lines + blank.
        let mut p = SseParser::default();
        let mut got = Vec::new();
        for piece in [&b"data: a\r"[..], b"\n\r", b"\n", b"data: b\r\n\r\n"] {
            p.push(piece);
            while let Some(Item::Event(e)) = p.next_item().unwrap() {
                got.push(e.data);
            }
        }
        assert_eq!(got, ["a", "b"]);
    }

    #[test]
    fn limits_and_errors() {
        let mut p = SseParser::new(16);
        p.push(b"data: 0123456789abcdef");
        assert_eq!(p.next_item(), Err(SseError::EventTooLarge { limit: 16 }));
        let mut p = SseParser::default();
        p.push(b"data: \xff\n\n");
        assert_eq!(p.next_item(), Err(SseError::NotUtf8));
        let mut p = SseParser::default();
        p.push(b"data: no end yet\n");
        assert_eq!(p.next_item(), Ok(None));
        assert_eq!(p.pending(), 17);
    }

    #[test]
    fn large_event_is_fine_below_the_limit() {
        let big = format!("data: {}\n\n", "x".repeat(1 << 20));
        let got = events(big.as_bytes(), 4096);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 1 << 20);
    }
}
