//! The response body type every handler returns, and small constructors.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Errors carried by response bodies (an upstream cut short, an idle timeout).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: in memory, or streamed from an upstream.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body held in memory.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
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
