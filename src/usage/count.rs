//! Counting tokens from provider responses (SPEC §11), pure: a [`Counter`]
//! is fed the JSON of a whole response or of each stream event, in order,
//! and ends with the [`Usage`] the response reported. It never changes a
//! byte; the caller decides what to forward.
//!
//! The traps each protocol sets: Anthropic's `message_delta.usage` and
//! Gemini's `usageMetadata` are cumulative — the last value of each field
//! counts, never a sum; OpenAI's `cached_tokens` are part of
//! `prompt_tokens`, Anthropic's cache reads and writes are not part of
//! `input_tokens`; Gemini's output is `candidatesTokenCount +
//! thoughtsTokenCount`; some OpenAI-compatible servers repeat usage in every
//! chunk (the last counts).

use std::borrow::Cow;
use std::sync::LazyLock;

use serde::Deserialize;

/// How a preset's API reports usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Anthropic,
    Gemini,
}

/// Tokens of one response, as §11 records them. `input_tokens` is
/// everything the provider read: fresh input, cache writes and cache reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cache reads (priced as `cached_input` / `cache_read`).
    pub cached_tokens: u64,
    /// Cache writes (priced as `cache_write`).
    pub cache_write_tokens: u64,
    /// The model the response names (`model`, `modelVersion`), if any.
    pub model: Option<String>,
}

/// Reads usage from a response's JSON, event by event.
#[derive(Debug)]
pub struct Counter {
    protocol: Protocol,
    /// The last value seen of each field (cumulative protocols), or `None`.
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
    cache_write: Option<u64>,
    /// Gemini: candidates and thoughts are reported apart.
    thoughts: Option<u64>,
    model: Option<String>,
    /// Bytes of answer text seen, for an estimate when usage is missing.
    text_bytes: u64,
}

impl Counter {
    pub fn new(protocol: Protocol) -> Counter {
        Counter {
            protocol,
            input: None,
            output: None,
            cached: None,
            cache_write: None,
            thoughts: None,
            model: None,
            text_bytes: 0,
        }
    }

    /// Feeds one JSON document (a whole response, or one stream event's
    /// data). Only its top-level keys that usage needs are read (see
    /// [`scan`]); a document of another shape is skipped.
    pub fn feed_json(&mut self, json: &[u8]) {
        if let Some(doc) = scan::<TextLen>(json) {
            self.feed_doc(doc);
        }
    }

    /// Feeds a whole (non-streamed) answer: its usage is read first, with
    /// the text skipped, and the text only measured when there was none.
    pub fn feed_whole(&mut self, json: &[u8]) {
        // An OpenAI answer's usage is (nearly) last and its model near the
        // start: found there without scanning the answer in between.
        let fast = match self.protocol {
            Protocol::OpenAi => openai_whole(json),
            _ => None,
        };
        if let Some(doc) = fast.or_else(|| scan::<NoText>(json)) {
            self.feed_doc(doc);
        }
        if !self.saw_usage() {
            self.feed_json(json);
        }
    }

    fn feed_doc<T: Text>(&mut self, doc: Doc<'_, T>) {
        match self.protocol {
            Protocol::OpenAi => self.openai(doc),
            Protocol::Anthropic => self.anthropic(doc),
            Protocol::Gemini => self.gemini(doc),
        }
    }

    /// Bytes of answer text seen so far (output estimates: ⌈bytes / 4⌉).
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// The input tokens reported so far (kept when the rest is estimated).
    pub fn reported_input(&self) -> Option<u64> {
        self.input.map(|i| match self.protocol {
            Protocol::Anthropic => i + self.cached.unwrap_or(0) + self.cache_write.unwrap_or(0),
            _ => i,
        })
    }

    /// True once any usage figure was reported.
    pub fn saw_usage(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// What the response reported; `None` when it reported nothing (the
    /// caller then estimates, §11).
    pub fn finish(self) -> Option<Usage> {
        if !self.saw_usage() {
            return None;
        }
        let cached = self.cached.unwrap_or(0);
        let cache_write = self.cache_write.unwrap_or(0);
        let (input, output) = match self.protocol {
            // prompt_tokens already include the cached ones.
            Protocol::OpenAi => (self.input.unwrap_or(0), self.output.unwrap_or(0)),
            // input_tokens exclude cache reads and writes.
            Protocol::Anthropic => (self.input.unwrap_or(0) + cached + cache_write, self.output.unwrap_or(0)),
            Protocol::Gemini => (self.input.unwrap_or(0), self.output.unwrap_or(0) + self.thoughts.unwrap_or(0)),
        };
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached,
            cache_write_tokens: cache_write,
            model: self.model,
        })
    }

    fn model_from(&mut self, m: Option<String>) {
        if m.is_some() {
            self.model = m;
        }
    }

    fn openai<T: Text>(&mut self, doc: Doc<'_, T>) {
        self.text_bytes += doc.choices.bytes() + doc.text.bytes() + doc.output.bytes();
        // A Responses API stream's text deltas, and its last event, which
        // holds the response.
        let doc = match doc.kind.as_deref() {
            Some("response.output_text.delta") => {
                self.text_bytes += doc.delta.bytes();
                return;
            }
            Some("response.completed") => match doc.response {
                Some(r) => *r,
                None => return,
            },
            _ => doc,
        };
        self.model_from(doc.model);
        let Some(u) = doc.usage else { return };
        // Chat completions and embeddings, or the Responses API.
        let input = u.prompt_tokens.or(u.input_tokens);
        let output = u.completion_tokens.or(u.output_tokens);
        let cached = u.prompt_tokens_details.or(u.input_tokens_details).and_then(|d| d.cached_tokens);
        // Repeated on every chunk by some servers: the last report counts.
        if input.is_some() || output.is_some() {
            self.input = input.or(self.input);
            self.output = Some(output.unwrap_or(0));
            self.cached = cached.or(self.cached);
        }
    }

    fn anthropic<T: Text>(&mut self, doc: Doc<'_, T>) {
        let usage = match doc.kind.as_deref() {
            Some("message_start") => {
                let Some(message) = doc.message else { return };
                self.model_from(message.model);
                message.usage
            }
            Some("message_delta") => doc.usage,
            Some("content_block_delta") => {
                self.text_bytes += doc.delta.bytes();
                None
            }
            // A whole (non-streamed) message.
            Some("message") => {
                self.model_from(doc.model);
                self.text_bytes += doc.content.bytes();
                doc.usage
            }
            _ => None,
        };
        let Some(u) = usage else { return };
        // Cumulative: a field present replaces the one before, never adds.
        for (n, slot) in [
            (u.input_tokens, &mut self.input),
            (u.output_tokens, &mut self.output),
            (u.cache_read_input_tokens, &mut self.cached),
            (u.cache_creation_input_tokens, &mut self.cache_write),
        ] {
            if n.is_some() {
                *slot = n;
            }
        }
    }

    fn gemini<T: Text>(&mut self, doc: Doc<'_, T>) {
        self.model_from(doc.model_version);
        self.text_bytes += doc.candidates.bytes();
        let Some(u) = doc.usage_metadata else { return };
        for (n, slot) in [
            (u.prompt, &mut self.input),
            (u.candidates, &mut self.output),
            (u.thoughts, &mut self.thoughts),
            (u.cached, &mut self.cached),
        ] {
            if n.is_some() {
                *slot = n;
            }
        }
    }
}

/// The bytes [`top_level_keys`] stops at: 1 a quote, 2 an opening
/// bracket, 3 a closing one, 4 a comma; everything else (0) is stepped over
/// in a tight loop.
static STOPS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = 1;
    t[b'{' as usize] = 2;
    t[b'[' as usize] = 2;
    t[b'}' as usize] = 3;
    t[b']' as usize] = 3;
    t[b',' as usize] = 4;
    t
};

/// The top-level keys of a JSON object with where each value starts, in
/// one pass that only tracks strings and nesting (no value is built);
/// `None` when `json` is not an object.
pub(crate) fn top_level_keys(json: &[u8], mut f: impl FnMut(&[u8], usize)) -> Option<()> {
    let ws = |mut i: usize| {
        while json.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut depth = 1usize;
    let mut key_next = true;
    loop {
        while json.get(i).is_some_and(|&b| STOPS[usize::from(b)] == 0) {
            i += 1;
        }
        let Some(&b) = json.get(i) else { return Some(()) };
        match STOPS[usize::from(b)] {
            1 => {
                let start = i + 1;
                let (end, escaped) = string_end(json, start)?;
                i = end + 1;
                if depth == 1 && key_next {
                    let colon = ws(i);
                    if json.get(colon) != Some(&b':') {
                        return None;
                    }
                    i = ws(colon + 1);
                    let raw = &json[start..end];
                    if escaped {
                        // An escaped key (rare): compared by what it says.
                        let key: String = one(&json[start - 1..=end])?;
                        f(key.as_bytes(), i);
                    } else {
                        f(raw, i);
                    }
                    key_next = false;
                }
            }
            2 => {
                depth += 1;
                i += 1;
            }
            3 => {
                depth -= 1;
                if depth == 0 {
                    return Some(());
                }
                i += 1;
            }
            _ => {
                key_next = depth == 1;
                i += 1;
            }
        }
    }
}

/// The index of the quote that ends the string whose content starts at
/// `i`, and whether the string has escapes.
#[inline(always)]
pub(crate) fn string_end(json: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let at = i + quote_or_backslash(json.get(i..)?)?;
        if json[at] == b'"' {
            return Some((at, escaped));
        }
        escaped = true;
        i = at + 2;
    }
}

/// The first `"` or `\` in `s` (the rest of a document, so usually more
/// than a word long), eight bytes at a time: JSON strings are mostly too
/// short for `memchr`'s setup to pay off, and a byte loop costs several
/// instructions per byte.
#[inline(always)]
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` that is zero (exact up to the first
    // zero byte, which is all that is used).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut at = 0;
    while let Some(word) = s.get(at..at + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let found = zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    s.get(at..)?.iter().position(|&b| b == b'"' || b == b'\\').map(|p| at + p)
}

/// A JSON string at the start of `v`: borrowed when it has no escapes
/// (most have none), decoded otherwise; `None` for anything else, and for
/// what JSON does not allow in a string (control characters).
pub(crate) fn string_value(v: &[u8]) -> Option<Cow<'_, str>> {
    if v.first() != Some(&b'"') {
        return None;
    }
    let (end, escaped) = string_end(v, 1)?;
    if escaped {
        return one::<String>(v).map(Cow::Owned);
    }
    let raw = &v[1..end];
    if raw.iter().any(|&b| b < 0x20) {
        return None;
    }
    std::str::from_utf8(raw).ok().map(Cow::Borrowed)
}

/// One JSON value at the start of `v` (what follows it is not read).
pub(crate) fn one<'a, T: Deserialize<'a>>(v: &'a [u8]) -> Option<T> {
    T::deserialize(&mut serde_json::Deserializer::from_slice(v)).ok()
}

/// An OpenAI answer's `usage` and `model`, when both can be proven to be
/// top-level keys without reading the whole document: the last `"usage"`
/// key is top-level when what follows its value closes the document; the
/// first `"model"` key (if the bytes hold one at all) when the scan up to it
/// is at depth one. `None` sends the caller to the full scan.
fn openai_whole(json: &[u8]) -> Option<Doc<'_, NoText>> {
    let at = key_at(json, last_usage_key(json)?)?;
    let end = value_end(json, at)?;
    if !closes_document(json, end) {
        return None;
    }
    let usage = Some(RawUsage::scan(&json[at..])?);
    static MODEL: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"model\""));
    let model = match MODEL.find(json) {
        None => None,
        Some(pos) => {
            let v = key_at(json, pos)?;
            if depth_at(json, pos)? != 1 {
                return None;
            }
            string_value(&json[v..]).map(Cow::into_owned)
        }
    };
    Some(Doc { usage, model, ..Doc::default() })
}

/// The last `"usage"` in `json` (its opening quote): the quotes from the
/// end, each compared. The usage is near the end, a few quotes away, so
/// this beats building a reverse substring searcher for every answer.
fn last_usage_key(json: &[u8]) -> Option<usize> {
    memchr::memrchr_iter(b'"', json).find(|&q| json[q + 1..].starts_with(b"usage\""))
}

/// Where the value of the key whose opening quote is at `quote` starts,
/// when it is a key: the quote follows `{` or `,` (white space between)
/// and is followed by `:`. (In valid JSON such a quote cannot sit inside a
/// string: a quote there is escaped, so preceded by a backslash.)
fn key_at(json: &[u8], quote: usize) -> Option<usize> {
    let before = json[..quote].iter().rposition(|b| !b.is_ascii_whitespace())?;
    if !matches!(json[before], b'{' | b',') {
        return None;
    }
    let (end, _) = string_end(json, quote + 1)?;
    let mut i = end + 1;
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    if json.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    (i < json.len()).then_some(i)
}

/// The end of the object or array value at `i` (the index after it).
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    if !matches!(json.get(i), Some(b'{' | b'[')) {
        return None;
    }
    let mut depth = 0usize;
    let mut j = i;
    loop {
        match *json.get(j)? {
            b'"' => j = string_end(json, j + 1)?.0,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
}

/// True when the bytes from `i` close exactly one object (the one the
/// value before `i` sits in) and then only white space follows.
fn closes_document(json: &[u8], i: usize) -> bool {
    let mut depth = 0usize;
    let mut j = i;
    while let Some(&b) = json.get(j) {
        match b {
            b'"' => match string_end(json, j + 1) {
                Some((end, _)) => j = end,
                None => return false,
            },
            b'{' | b'[' => depth += 1,
            b']' if depth == 0 => return false,
            b'}' if depth == 0 => return json[j + 1..].iter().all(u8::is_ascii_whitespace),
            b'}' | b']' => depth -= 1,
            _ => {}
        }
        j += 1;
    }
    false
}

/// The nesting depth at `pos` (1: inside the top-level object), `None`
/// when `pos` is inside a string.
fn depth_at(json: &[u8], pos: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = 0;
    while j < pos {
        match json[j] {
            b'"' => {
                j = string_end(json, j + 1)?.0;
                if j >= pos {
                    return None;
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        j += 1;
    }
    Some(depth)
}

/// The document's fields that usage needs, read from its top-level keys:
/// each value is parsed alone, the rest of the document only scanned.
fn scan<T: Text>(json: &[u8]) -> Option<Doc<'_, T>> {
    let mut doc = Doc::<T>::default();
    top_level_keys(json, |key, at| {
        let v = &json[at..];
        match key {
            b"type" => doc.kind = string_value(v),
            b"model" => doc.model = string_value(v).map(Cow::into_owned),
            b"modelVersion" => doc.model_version = string_value(v).map(Cow::into_owned),
            b"usage" => doc.usage = RawUsage::scan(v),
            b"usageMetadata" => doc.usage_metadata = GeminiUsage::scan(v),
            b"response" => doc.response = one::<Option<Box<Doc<'_, T>>>>(v).flatten(),
            b"message" => doc.message = one::<Option<Box<Doc<'_, T>>>>(v).flatten(),
            _ if !T::MEASURED => {}
            b"choices" => doc.choices = one(v).unwrap_or_default(),
            b"delta" => doc.delta = one(v).unwrap_or_default(),
            b"content" => doc.content = one(v).unwrap_or_default(),
            b"text" => doc.text = one(v).unwrap_or_default(),
            b"output" => doc.output = one(v).unwrap_or_default(),
            b"candidates" => doc.candidates = one(v).unwrap_or_default(),
            _ => {}
        }
    })?;
    Some(doc)
}

/// The fields of a response document that usage needs, for all three
/// protocols (a missing field is `None`; unknown fields are skipped).
#[derive(Debug, Default, Deserialize)]
#[serde(default, bound(deserialize = "T: Text"))]
struct Doc<'a, T> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    model: Option<String>,
    #[serde(rename = "modelVersion")]
    model_version: Option<String>,
    usage: Option<RawUsage>,
    #[serde(rename = "usageMetadata")]
    usage_metadata: Option<GeminiUsage>,
    /// Responses API: `response.completed`.
    #[serde(borrow)]
    response: Option<Box<Doc<'a, T>>>,
    /// Anthropic: `message_start`.
    #[serde(borrow)]
    message: Option<Box<Doc<'a, T>>>,
    choices: T,
    delta: T,
    content: T,
    text: T,
    /// Responses API: the output items.
    output: T,
    candidates: T,
}

/// How a document's answer text is read: measured ([`TextLen`]) or skipped
/// ([`NoText`]).
trait Text: Default + for<'de> Deserialize<'de> {
    /// False when the text is not read at all.
    const MEASURED: bool;
    fn bytes(&self) -> u64;
}

impl Text for TextLen {
    const MEASURED: bool = true;
    fn bytes(&self) -> u64 {
        self.0
    }
}

/// Text skipped unread.
#[derive(Debug, Default)]
struct NoText;

impl<'de> Deserialize<'de> for NoText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NoText, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| NoText)
    }
}

impl Text for NoText {
    const MEASURED: bool = false;
    fn bytes(&self) -> u64 {
        0
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl RawUsage {
    /// Reads a usage object by its keys, numbers digit by digit (`None`
    /// for anything but an object).
    fn scan(v: &[u8]) -> Option<RawUsage> {
        let mut u = RawUsage::default();
        top_level_keys(v, |key, at| {
            let n = &v[at..];
            match key {
                b"prompt_tokens" => u.prompt_tokens = integer(n),
                b"completion_tokens" => u.completion_tokens = integer(n),
                b"input_tokens" => u.input_tokens = integer(n),
                b"output_tokens" => u.output_tokens = integer(n),
                b"cache_read_input_tokens" => u.cache_read_input_tokens = integer(n),
                b"cache_creation_input_tokens" => u.cache_creation_input_tokens = integer(n),
                b"prompt_tokens_details" => u.prompt_tokens_details = Details::scan(n),
                b"input_tokens_details" => u.input_tokens_details = Details::scan(n),
                _ => {}
            }
        })?;
        Some(u)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Details {
    cached_tokens: Option<u64>,
}

impl Details {
    fn scan(v: &[u8]) -> Option<Details> {
        let mut d = Details::default();
        top_level_keys(v, |key, at| {
            if key == b"cached_tokens" {
                d.cached_tokens = integer(&v[at..]);
            }
        })?;
        Some(d)
    }
}

/// A JSON non-negative integer at the start of `v` (`None` for anything
/// else: a fraction, an exponent, a string, a number past `u64`).
fn integer(v: &[u8]) -> Option<u64> {
    // `-0` is a JSON integer too (zero); any other minus is not a count.
    if let Some(rest) = v.strip_prefix(b"-") {
        return (integer(rest) == Some(0) && rest.first() == Some(&b'0')).then_some(0);
    }
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || matches!(v.get(digits), Some(b'.' | b'e' | b'E')) || (digits > 1 && v[0] == b'0') {
        return None;
    }
    v[..digits].iter().try_fold(0u64, |n, &b| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GeminiUsage {
    #[serde(rename = "promptTokenCount")]
    prompt: Option<u64>,
    #[serde(rename = "candidatesTokenCount")]
    candidates: Option<u64>,
    #[serde(rename = "thoughtsTokenCount")]
    thoughts: Option<u64>,
    #[serde(rename = "cachedContentTokenCount")]
    cached: Option<u64>,
}

impl GeminiUsage {
    fn scan(v: &[u8]) -> Option<GeminiUsage> {
        let mut u = GeminiUsage::default();
        top_level_keys(v, |key, at| {
            let n = &v[at..];
            match key {
                b"promptTokenCount" => u.prompt = integer(n),
                b"candidatesTokenCount" => u.candidates = integer(n),
                b"thoughtsTokenCount" => u.thoughts = integer(n),
                b"cachedContentTokenCount" => u.cached = integer(n),
                _ => {}
            }
        })?;
        Some(u)
    }
}

/// The bytes of answer text in a value of any shape: a string's length, or
/// the sum over the text-bearing keys of an object (`text`, `content`,
/// `delta`, `message`, `parts`, `thinking`, `partial_json`) and over the
/// items of an array. Never an error, whatever the value.
#[derive(Debug, Default)]
struct TextLen(u64);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TextLen, D::Error> {
        d.deserialize_any(TextLenVisitor)
    }
}

struct TextLenVisitor;

impl<'de> serde::de::Visitor<'de> for TextLenVisitor {
    type Value = TextLen;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, s: &str) -> Result<TextLen, E> {
        Ok(TextLen(s.len() as u64))
    }

    fn visit_bool<E>(self, _: bool) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_i64<E>(self, _: i64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_u64<E>(self, _: u64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_f64<E>(self, _: f64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_unit<E>(self) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_none<E>(self) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<TextLen, D::Error> {
        TextLen::deserialize(d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TextLen, A::Error> {
        let mut n = 0;
        while let Some(TextLen(m)) = seq.next_element()? {
            n += m;
        }
        Ok(TextLen(n))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TextLen, A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if matches!(&*key, "text" | "content" | "delta" | "message" | "parts" | "thinking" | "partial_json") {
                n += map.next_value::<TextLen>()?.0;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(TextLen(n))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn string_values_read_as_serde_json_reads_them() {
        let cases: [&[u8]; 11] = [
            br#""gpt-4o""#,
            br#""a\"b" , "#,
            br#""\u00e9t\u00e9""#,
            "\"caf\u{e9}\"".as_bytes(),
            br#""""#,
            b"\"tab\there\"",
            b"\"unterminated",
            b"\"bad utf8 \xff\"",
            b"42",
            b"null",
            br#""\x""#,
        ];
        for v in cases {
            let want: Option<String> = super::one(v);
            assert_eq!(super::string_value(v).map(|c| c.into_owned()), want, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn quotes_and_backslashes_are_found_word_by_word_as_byte_by_byte() {
        // Near misses of both bytes (one bit off, the high bit set) around
        // each position and length that crosses a word.
        let fillers = [b'a', b'"' ^ 1, b'\\' ^ 1, b'"' | 0x80, b'\\' | 0x80, 0x00, 0xff, 0x21, 0x5b];
        for len in 0..40 {
            for &fill in &fillers {
                let mut s = vec![fill; len];
                assert_eq!(super::quote_or_backslash(&s), None, "{len} {fill:#x}");
                for at in 0..len {
                    for needle in [b'"', b'\\'] {
                        s[at] = needle;
                        let want = s.iter().position(|&b| b == b'"' || b == b'\\');
                        assert_eq!(super::quote_or_backslash(&s), want, "{len} {at} {fill:#x}");
                        // A second one further on changes nothing.
                        if at + 3 < len {
                            s[at + 3] = b'"';
                            assert_eq!(super::quote_or_backslash(&s), want);
                            s[at + 3] = fill;
                        }
                        s[at] = fill;
                    }
                }
            }
        }
    }

    use super::*;
    use serde_json::{Value, json};

    fn count(protocol: Protocol, docs: &[Value]) -> Option<Usage> {
        let mut c = Counter::new(protocol);
        for d in docs {
            c.feed_json(d.to_string().as_bytes());
        }
        c.finish()
    }

    fn usage(input: u64, output: u64, cached: u64, cache_write: u64, model: Option<&str>) -> Option<Usage> {
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached,
            cache_write_tokens: cache_write,
            model: model.map(str::to_owned),
        })
    }

    #[test]
    fn integers_digit_by_digit() {
        for (text, want) in [
            ("0", Some(0)),
            ("12,", Some(12)),
            ("18446744073709551615}", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("1.5", None),
            ("1e3", None),
            ("-1", None),
            ("-0", Some(0)),
            ("-0.0", None),
            ("01", None),
            ("\"3\"", None),
            ("", None),
        ] {
            assert_eq!(integer(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn the_openai_shortcut_reads_what_the_full_scan_reads() {
        let docs: &[&str] = &[
            r#"{"id":"c","model":"gpt-4o-2024","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":9,"completion_tokens":10}}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1},"service_tier":"default","system_fingerprint":"fp"}"#,
            r#"{"choices":[{"message":{"content":"a "usage":{"prompt_tokens":5}"}}],"usage":{"prompt_tokens":7}}"#,
            r#"{"usage":{"prompt_tokens":1},"choices":[{"usage":{"prompt_tokens":99}}]}"#,
            r#"{"meta":{"model":"nested"},"model":"top","usage":{"prompt_tokens":3}}"#,
            r#"{"usage":{"prompt_tokens":2},"x":[{"usage":{"prompt_tokens":50}}],"y":1}"#,
            r#"{"usage":{"prompt_tokens":4}} trailing"#,
            r#"[{"usage":{"prompt_tokens":4}}]"#,
            r#"{"usage": {"prompt_tokens": 6, "prompt_tokens_details": {"cached_tokens": 2}} }"#,
        ];
        for doc in docs {
            let mut fast = Counter::new(Protocol::OpenAi);
            fast.feed_whole(doc.as_bytes());
            let mut full = Counter::new(Protocol::OpenAi);
            if let Some(d) = scan::<NoText>(doc.as_bytes()) {
                full.feed_doc(d);
            }
            if !full.saw_usage() {
                full.feed_json(doc.as_bytes());
            }
            assert_eq!(fast.finish(), full.finish(), "{doc}");
        }
        assert!(openai_whole(docs[0].as_bytes()).is_some(), "the common shape takes the shortcut");
        assert!(openai_whole(docs[1].as_bytes()).is_some());
        assert!(openai_whole(docs[3].as_bytes()).is_none(), "a nested usage last: the full scan");
    }

    #[test]
    fn only_top_level_keys_are_read() {
        let keys = |json: &str| {
            let mut out = Vec::new();
            let ok = top_level_keys(json.as_bytes(), |k, at| {
                out.push((String::from_utf8_lossy(k).into_owned(), json.as_bytes()[at] as char))
            });
            ok.map(|()| out)
        };
        let doc = r#" { "a" : {"usage": {"x": 1}}, "s": "a \"usage\": {} ,}", "usage":[1], "n" : 5 } "#;
        let got = keys(doc).unwrap();
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["a", "s", "usage", "n"]);
        assert_eq!(got.iter().map(|(_, c)| *c).collect::<String>(), "{\"[5");
        assert!(keys("[1]").is_none() && keys("nope").is_none() && keys("").is_none());
        assert!(keys(r#"{"a" 1}"#).is_none());
        let escaped = keys(r#"{"us\u0061ge": 1, "a\"b": 2}"#).unwrap();
        assert_eq!(escaped.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["usage", "a\"b"]);
        // A nested usage never counts; a top-level one after it does.
        let nested = br#"{"candidates":[{"args":{"usage":{"prompt_tokens":99}}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let mut c = Counter::new(Protocol::OpenAi);
        c.feed_whole(nested);
        assert_eq!(c.finish().map(|u| u.input_tokens), Some(3));
        let mut c = Counter::new(Protocol::OpenAi);
        c.feed_whole(br#"{"x":{"usage":{"prompt_tokens":99,"completion_tokens":1}}}"#);
        assert!(c.finish().is_none());
        // Text is measured when there is no usage.
        let mut c = Counter::new(Protocol::Anthropic);
        c.feed_whole(br#"{"type":"message","content":[{"type":"text","text":"12345678"}]}"#);
        assert_eq!(c.text_bytes(), 8);
    }

    #[test]
    fn openai() {
        let chat = json!({"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":4}}});
        assert_eq!(count(Protocol::OpenAi, &[chat]), usage(9, 12, 4, 0, Some("gpt-4o-mini-2024-07-18")));
        // A stream: content chunks, then the one usage chunk.
        let chunk = json!({"model":"gpt-4o","choices":[{"delta":{"content":"Hi"}}]});
        let last = json!({"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}});
        assert_eq!(count(Protocol::OpenAi, &[chunk.clone(), chunk.clone(), last]), usage(5, 2, 0, 0, Some("gpt-4o")));
        // No usage at all: nothing reported (the caller estimates).
        assert_eq!(count(Protocol::OpenAi, &[chunk]), None);
        // Repeated on every chunk: the last counts, never a sum.
        let rep = |n: u64| json!({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":n}});
        assert_eq!(count(Protocol::OpenAi, &[rep(1), rep(2), rep(3)]), usage(5, 3, 0, 0, None));
        // Responses API, JSON and the stream's response.completed.
        let responses = json!({"model":"o4-mini","usage":{"input_tokens":20,"output_tokens":7,"input_tokens_details":{"cached_tokens":10}}});
        assert_eq!(count(Protocol::OpenAi, std::slice::from_ref(&responses)), usage(20, 7, 10, 0, Some("o4-mini")));
        let completed = json!({"type":"response.completed","response":responses});
        let delta = json!({"type":"response.output_text.delta","delta":"x"});
        assert_eq!(count(Protocol::OpenAi, &[delta, completed]), usage(20, 7, 10, 0, Some("o4-mini")));
        // Embeddings: input only.
        let emb = json!({"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}});
        assert_eq!(count(Protocol::OpenAi, &[emb]), usage(8, 0, 0, 0, Some("text-embedding-3-small")));
    }

    #[test]
    fn anthropic() {
        let start = json!({"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":50,"output_tokens":1}}});
        let ping = json!({"type":"ping"});
        let d1 = json!({"type":"message_delta","usage":{"output_tokens":10}});
        let d2 = json!({"type":"message_delta","usage":{"output_tokens":15}});
        // Cumulative deltas: 15, not 1 + 10 + 15. Input counts cache reads and writes.
        let got = count(Protocol::Anthropic, &[start.clone(), ping, d1, d2]);
        assert_eq!(got, usage(175, 15, 50, 100, Some("claude-sonnet-4-5")));
        // A delta that repeats the input fields replaces them.
        let d3 =
            json!({"type":"message_delta","usage":{"input_tokens":25,"cache_read_input_tokens":50,"output_tokens":16}});
        assert_eq!(count(Protocol::Anthropic, &[start.clone(), d3]).unwrap().output_tokens, 16);
        // A cut stream keeps what message_start reported.
        assert_eq!(count(Protocol::Anthropic, &[start]), usage(175, 1, 50, 100, Some("claude-sonnet-4-5")));
        let whole = json!({"type":"message","model":"claude-haiku-4-5","usage":{"input_tokens":3,"output_tokens":4}});
        assert_eq!(count(Protocol::Anthropic, &[whole]), usage(3, 4, 0, 0, Some("claude-haiku-4-5")));
    }

    #[test]
    fn gemini() {
        let first = json!({"candidates":[],"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"modelVersion":"gemini-2.5-pro"});
        let last = json!({"candidates":[],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":12,"thoughtsTokenCount":310,"totalTokenCount":331},"modelVersion":"gemini-2.5-pro"});
        // Cumulative; output = candidates + thoughts.
        assert_eq!(count(Protocol::Gemini, &[first.clone(), last]), usage(9, 322, 0, 0, Some("gemini-2.5-pro")));
        assert_eq!(count(Protocol::Gemini, &[first]), usage(9, 0, 0, 0, Some("gemini-2.5-pro")));
        let cached =
            json!({"usageMetadata":{"promptTokenCount":100,"cachedContentTokenCount":60,"candidatesTokenCount":5}});
        assert_eq!(count(Protocol::Gemini, &[cached]), usage(100, 5, 60, 0, None));
        assert_eq!(count(Protocol::Gemini, &[json!({"candidates":[]})]), None);
    }
}
