//! veilgate's JSON error in place of hyper's own bare HTTP/1.1 refusals.
//!
//! When hyper cannot parse a request head (bytes that are not HTTP, a head
//! over its buffer, a request target too long) it answers by itself, before
//! any service runs, with a bodiless `HTTP/1.1 4xx` whose only headers are
//! `connection: close`, `content-length: 0` and `date` — then closes. SPEC
//! §1 wants every refusal to be veilgate's JSON error, so this wrapper
//! around the downstream stream recognises exactly that response, written
//! while no request is in flight on an HTTP/1 connection, and writes the
//! JSON error of the same status instead. Everything else passes through
//! untouched (one prefix comparison per write).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::idle::IdleClock;
use crate::error::Error;

/// What the connection turned out to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

/// A downstream stream whose hyper-made refusals become JSON.
pub(crate) struct Rescued<S> {
    inner: S,
    clock: Arc<IdleClock>,
    max_header_bytes: usize,
    protocol: Protocol,
    /// A replacement being written: its bytes, how far, and how many bytes
    /// of hyper's own response it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<S> Rescued<S> {
    pub(crate) fn new(inner: S, clock: Arc<IdleClock>, max_header_bytes: usize) -> Rescued<S> {
        Rescued { inner, clock, max_header_bytes, protocol: Protocol::Unknown, replacing: None }
    }

    /// The JSON refusal standing in for `buf`, when `buf` is hyper's own.
    fn replacement(&self, buf: &[u8]) -> Option<Vec<u8>> {
        if self.protocol != Protocol::Http1 || self.clock.is_busy() {
            return None;
        }
        let error = match hyper_refusal(buf)? {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Error::HeadTooLarge { limit: self.max_header_bytes },
            StatusCode::URI_TOO_LONG => Error::UriTooLong,
            _ => Error::NotHttp,
        };
        Some(error.to_raw_response())
    }
}

/// The status of `buf` when it is exactly one hyper-made refusal: a 4xx
/// status line, then `connection: close`, `content-length: 0` and `date`
/// and nothing else. Responses veilgate's service makes always carry other
/// headers (`x-proxy-error`, `x-veilgate-transport`, a content type, CORS).
fn hyper_refusal(buf: &[u8]) -> Option<StatusCode> {
    if !buf.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 4];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = resp.parse(buf) else { return None };
    let names: Vec<&str> = resp.headers.iter().map(|h| h.name).collect();
    let only_hypers = len == buf.len()
        && names.len() == 3
        && names.iter().all(|n| ["connection", "content-length", "date"].iter().any(|m| n.eq_ignore_ascii_case(m)))
        && resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-length") && h.value == b"0");
    only_hypers.then(|| resp.code.and_then(|c| StatusCode::from_u16(c).ok())).flatten()
}

impl<S: AsyncRead + Unpin> AsyncRead for Rescued<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.protocol == Protocol::Unknown && buf.filled().len() > before {
            // The HTTP/2 preface starts "PRI "; no HTTP/1.1 method does.
            let first = buf.filled()[before];
            this.protocol = if first == b'P' && buf.filled()[before..].starts_with(b"PRI ") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> Rescued<S> {
    /// Writes the pending replacement; `Ready(n)` once it is all out, where
    /// `n` is the length of hyper's response it replaced.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, stands_for)) = &mut self.replacing {
            if *written == bytes.len() {
                let n = *stands_for;
                self.replacing = None;
                return Poll::Ready(Ok(n));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rescued<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none()
            && let Some(bytes) = this.replacement(buf)
        {
            this.replacing = Some((bytes, 0, buf.len()));
        }
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper's refusal is one buffer; anything vectored with more than
        // a head in its first slice is a response of veilgate's own.
        let first = bufs.iter().find(|b| !b.is_empty());
        if this.replacing.is_some() || first.is_some_and(|b| b.starts_with(b"HTTP/1.1 4")) {
            let Some(first) = first else { return Poll::Ready(Ok(0)) };
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_refusal_is_recognised() {
        let date = "date: Tue, 01 Dec 2026 10:18:11 GMT\r\n";
        let hyper = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n"
        );
        assert_eq!(hyper_refusal(hyper.as_bytes()), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let bad = format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n");
        assert_eq!(hyper_refusal(bad.as_bytes()), Some(StatusCode::BAD_REQUEST));
        for ours in [
            // an upstream's empty 400, passed on
            format!("HTTP/1.1 400 Bad Request\r\nx-veilgate-transport: socket\r\ncontent-length: 0\r\n{date}\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\nx-a: 1\r\n{date}\r\n"),
            // a body follows
            format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 2\r\n{date}\r\n{{}}"),
            format!("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n"),
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n".to_owned(),
            "0\r\n\r\n".to_owned(),
        ] {
            assert_eq!(hyper_refusal(ours.as_bytes()), None, "{ours:?}");
        }
    }
}
