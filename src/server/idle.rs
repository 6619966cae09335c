//! How long a downstream connection has waited for a request head.
//!
//! `header_read_timeout_ms` runs from accept (through the TLS handshake)
//! and from the end of each response on a kept-alive connection until a
//! complete head — for HTTP/1.1 and HTTP/2 alike, so it cannot live in
//! either protocol's parser. A connection counts as *busy* from the moment
//! the service is called for a request (its head is complete) until that
//! response's body is dropped; it counts as *idle* otherwise. The server
//! closes a connection that stayed idle for the whole timeout (GOAWAY on
//! HTTP/2).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub(crate) struct IdleClock {
    origin: Instant,
    /// Requests whose response has not been dropped yet.
    busy: AtomicUsize,
    /// Milliseconds after `origin` when `busy` last fell to zero.
    idle_since_ms: AtomicU64,
}

impl IdleClock {
    /// A clock whose first idle period began at `accepted` (the accept, not
    /// the end of a TLS handshake).
    pub(crate) fn new(accepted: Instant) -> Arc<IdleClock> {
        Arc::new(IdleClock { origin: accepted, busy: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) })
    }

    /// Marks a request as in flight until the returned guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy { clock: Arc::clone(self) }
    }

    /// True while a request is in flight.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// Completes once the connection has been idle for `timeout` without a
    /// break. While it is busy, it looks again every `timeout`: cheaper
    /// than a wake-up per request.
    pub(crate) async fn expired(&self, timeout: Duration) {
        loop {
            if self.is_busy() {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let since = self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            let until = since + timeout;
            if Instant::now() >= until && !self.is_busy() {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

/// A request in flight; dropping it ends the busy period.
#[derive(Debug)]
pub(crate) struct Busy {
    clock: Arc<IdleClock>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let clock = &self.clock;
        // The idle period starts now; stored before the count falls, so a
        // watcher that sees zero never reads an older start.
        let now = clock.origin.elapsed().as_millis() as u64;
        clock.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        clock.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_from_accept_and_from_the_end_of_each_response() {
        let timeout = Duration::from_secs(30);
        let clock = IdleClock::new(Instant::now());
        tokio::time::advance(Duration::from_secs(20)).await;
        let busy = clock.busy();
        // Busy for a minute: never expires meanwhile.
        let waited = tokio::time::timeout(Duration::from_secs(60), clock.expired(timeout)).await;
        assert!(waited.is_err(), "expired while a request was in flight");
        drop(busy);
        let ended = Instant::now();
        clock.expired(timeout).await;
        assert_eq!(Instant::now() - ended, timeout, "the idle period starts when the response ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_expires_after_the_timeout() {
        let accepted = Instant::now();
        let clock = IdleClock::new(accepted);
        clock.expired(Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - accepted, Duration::from_secs(5));
    }
}
