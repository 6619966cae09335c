//! The response body type every handler returns, and small constructors.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Errors carried by response bodies (an upstream cut short, an idle timeout).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: in memory, or streamed from an upstream.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The data frames of a body gathered into one buffer. The usual small
/// JSON body comes in one frame, which is kept as it is; bytes are copied
/// only once a second frame arrives.
#[derive(Default)]
pub(crate) struct Gathered {
    first: Option<Bytes>,
    rest: BytesMut,
    len: u64,
}

impl Gathered {
    pub(crate) fn push(&mut self, data: Bytes) {
        self.len += data.len() as u64;
        match self.first.take() {
            None if self.rest.is_empty() => self.first = Some(data),
            None => self.rest.extend_from_slice(&data),
            Some(f) => {
                self.rest.reserve(f.len() + data.len());
                self.rest.extend_from_slice(&f);
                self.rest.extend_from_slice(&data);
            }
        }
    }

    /// Bytes gathered so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn finish(self) -> Bytes {
        self.first.unwrap_or_else(|| self.rest.freeze())
    }
}

/// A body held in memory.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A body that fails with `e` at once (a stream that broke stays broken
/// when what came before it is put back in front).
pub(crate) fn failing(e: BoxError) -> Body {
    let once = futures_util::stream::once(async move { Err::<http_body::Frame<Bytes>, BoxError>(e) });
    http_body_util::StreamBody::new(once).boxed_unsync()
}

/// No body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body that keeps `guard` alive until the body is dropped: after its last
/// frame was sent, or when the client went away (a busy mark, an upstream
/// slot).
pub(crate) struct Holding<B, G> {
    pub inner: B,
    pub _guard: G,
}

impl<B, G> HttpBody for Holding<B, G>
where
    B: HttpBody<Data = Bytes> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_is_kept_as_it_is_and_more_are_joined() {
        let one = Bytes::from_static(b"{\"a\":1}");
        let mut g = Gathered::default();
        g.push(one.clone());
        let kept = g.finish();
        assert_eq!(kept.as_ptr(), one.as_ptr(), "not copied");
        let mut g = Gathered::default();
        for part in [&b"ab"[..], b"", b"cd", b"e"] {
            g.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(g.len(), 5);
        assert_eq!(&g.finish()[..], b"abcde");
        assert!(Gathered::default().finish().is_empty());
    }
}
