//! Body adapters shared by both transports.
//!
//! [`Guarded`] adds the idle timeout between body chunks and makes sure a
//! failing body still delivers what came before the failure; [`Prepend`]
//! puts bytes that were read ahead (to inspect a response) back in front.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};

/// The upstream sent nothing for the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub(crate) struct IdleTimeout(pub Duration);

/// A response body with an idle timeout and flush-before-abort.
///
/// hyper writes body frames out only once the body is pending, so an error
/// returned right after data would make it drop that data together with the
/// head. When data was handed out since the last `Pending`, the error is held
/// back for one poll (the task wakes itself at once): the client receives
/// every byte that arrived, then the abort.
pub(crate) struct Guarded<B> {
    inner: B,
    idle: Duration,
    /// Made at the first wait: a body that is there when asked for never
    /// touches the timer wheel. Its deadline is not moved with every chunk
    /// (a wheel removal and insertion per SSE event): when it fires, it is
    /// pushed to `waiting_since + idle` unless that has passed too.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait began (the first `Pending` after data);
    /// `None` while data flows.
    waiting_since: Option<Instant>,
    unflushed: bool,
    held: Option<BoxError>,
    done: bool,
}

impl<B> Guarded<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> Guarded<B> {
        // `unflushed` starts true: the response head itself is still to be
        // written, and a client should see it before the abort.
        Guarded { inner, idle, timer: None, waiting_since: None, unflushed: true, held: None, done: false }
    }

    fn fail(&mut self, cx: &mut Context<'_>, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        if self.unflushed {
            self.unflushed = false;
            self.held = Some(e);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(e)))
    }
}

impl<B> HttpBody for Guarded<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.held.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting_since = None;
                this.unflushed = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(cx, e.into()),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.unflushed = false;
                let due = *this.waiting_since.get_or_insert_with(Instant::now) + this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                while timer.as_mut().poll(cx).is_ready() {
                    // Fired at a deadline set during an earlier wait: idle
                    // only if this wait has lasted the whole timeout too.
                    if Instant::now() >= due {
                        return this.fail(cx, Box::new(IdleTimeout(this.idle)));
                    }
                    timer.as_mut().reset(due);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `prefix`, then the rest of `inner`.
pub(crate) struct Prepend {
    prefix: Option<Bytes>,
    inner: Body,
}

impl Prepend {
    pub(crate) fn new(prefix: Bytes, inner: Body) -> Prepend {
        Prepend { prefix: (!prefix.is_empty()).then_some(prefix), inner }
    }
}

impl HttpBody for Prepend {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;
    use http_body_util::BodyExt;

    /// A body that yields its frames, then stays pending forever.
    struct Script(Vec<Result<Bytes, &'static str>>);

    impl HttpBody for Script {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0.is_empty() {
                return Poll::Pending;
            }
            Poll::Ready(Some(match self.0.remove(0) {
                Ok(b) => Ok(Frame::data(b)),
                Err(e) => Err(e.into()),
            }))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_when_silent() {
        let mut body = Guarded::new(Script(vec![Ok(Bytes::from_static(b"a"))]), Duration::from_secs(5));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<IdleTimeout>());
        assert!(body.frame().await.is_none());
    }

    /// Chunks 3 s apart under a 5 s timeout: never idle, however long the
    /// stream runs; then 5 s of silence ends it (the timer, set once, is
    /// pushed on when it fires early).
    #[tokio::test(start_paused = true)]
    async fn chunks_inside_the_timeout_keep_a_slow_stream_alive() {
        struct Chan(tokio::sync::mpsc::Receiver<Bytes>);
        impl HttpBody for Chan {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = Guarded::new(Chan(rx), Duration::from_secs(5));
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = tx.send(Bytes::from_static(b"x")).await;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        for _ in 0..4 {
            assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "x");
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<IdleTimeout>());
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(17) && took < Duration::from_millis(17_100), "{took:?}");
    }

    #[tokio::test]
    async fn error_after_data_waits_one_poll() {
        let mut body = Guarded::new(Script(vec![Ok(Bytes::from_static(b"a")), Err("broken")]), Duration::from_secs(60));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut pinned = Pin::new(&mut body);
        assert!(matches!(pinned.as_mut().poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(pinned.as_mut().poll_frame(&mut cx).is_pending(), "held back so the data is flushed");
        assert!(matches!(pinned.as_mut().poll_frame(&mut cx), Poll::Ready(Some(Err(_)))));
        assert!(matches!(pinned.as_mut().poll_frame(&mut cx), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn prepend_puts_bytes_back() {
        let body = Prepend::new(Bytes::from_static(b"head-"), full("tail"));
        assert_eq!(body.size_hint().exact(), Some(9));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "head-tail");
    }
}
