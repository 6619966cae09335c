//! The keep-alive pool of the socket transport, keyed by origin, egress and
//! whether the connection passed the target check.
//!
//! A connection goes back only after its response body was read to the end
//! with nothing extra behind it, never after `connection: close` or an
//! HTTP/1.0 response (the caller decides that). On checkout a connection is
//! skipped when it sat idle longer than `pool_idle_timeout_ms` or when a
//! non-blocking read shows the upstream closed it (or sent something
//! unasked) meanwhile.
//!
//! The pool also hands out the [`Slot`]s that bound upstream sockets as a
//! whole (`limits.max_upstream_connections`): every open upstream socket —
//! in use, idle in the pool, a tunnel's, or a fetch request's — holds one.
//! When none is free, an idle pooled connection is closed to make room; a
//! connection that finishes while requests wait for a slot is closed, not
//! pooled, so the waiters get its slot; a request waits at most
//! `connect_timeout_ms`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::policy::target::Origin;

use super::connect::Egress;
use super::{Conn, UpstreamError};

/// Idle connections kept per key at most; more are closed.
const MAX_IDLE_PER_KEY: usize = 64;

/// What a pooled connection is shared for. A connection opened without
/// the target check (an operator's preset target) never serves a request
/// that must pass it: the check ran on the address when the connection was
/// opened, so reusing an unchecked one would skip it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub origin: Origin,
    pub egress: Egress,
    /// True when the address passed the target check on connect.
    pub checked: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The right to hold one upstream socket open; dropped with the socket.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// How many upstream sockets may be open, and how long to wait for one.
#[derive(Clone, Copy, Debug)]
pub struct SlotLimit {
    pub max: usize,
    pub wait: Duration,
}

/// The pool. Cheap to share (`Arc`); the lock is held only to push or pop.
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>>,
    idle_timeout: Duration,
    count: AtomicUsize,
    slots: Arc<Semaphore>,
    limit: SlotLimit,
}

impl Pool {
    /// A pool whose idle connections expire after `idle_timeout`. Call
    /// [`Pool::spawn_reaper`] inside a runtime to close expired ones even
    /// when no request asks for their key again.
    pub fn new(idle_timeout: Duration, limit: SlotLimit) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(HashMap::default()),
            idle_timeout,
            count: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(limit.max)),
            limit,
        })
    }

    /// A slot for a new upstream socket: at once if one is free, else by
    /// closing the oldest idle connection, else the first to come free
    /// within the wait; past it, [`UpstreamError::Saturated`] (503).
    pub async fn slot(&self) -> Result<Slot, UpstreamError> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(Slot(permit));
        }
        if self.close_oldest_idle()
            && let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned()
        {
            return Ok(Slot(permit));
        }
        match tokio::time::timeout(self.limit.wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot(permit)),
            _ => Err(UpstreamError::Saturated { limit: self.limit.max }),
        }
    }

    /// True when every slot is taken (requests may be waiting for one).
    fn is_saturated(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// Closes the idle connection that waited longest; false if none.
    fn close_oldest_idle(&self) -> bool {
        let closed = {
            let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let oldest = map
                .iter()
                .filter_map(|(key, list)| list.first().map(|idle| (idle.since, key.clone())))
                .min_by_key(|(since, _)| *since)
                .map(|(_, key)| key);
            let Some(key) = oldest else { return false };
            let list = map.get_mut(&key);
            let closed = list.map(|l| l.remove(0));
            if map.get(&key).is_some_and(Vec::is_empty) {
                map.remove(&key);
            }
            closed
        };
        if closed.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        closed.is_some()
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// A live idle connection for `key`, most recently used first.
    pub fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let idle = {
                let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                // An emptied list stays (and keeps its room) for the
                // check-in that usually follows; the reaper drops it.
                map.get_mut(key)?.pop()?
            };
            self.count.fetch_sub(1, Ordering::Relaxed);
            if now.duration_since(idle.since) < self.idle_timeout && is_still_open(&idle.conn) {
                return Some(idle.conn);
            }
            // expired or closed by the upstream: drop it and look again
        }
    }

    /// Returns a connection whose last response was read completely. While
    /// every slot is taken the connection is closed instead, so that a
    /// request waiting for a slot gets this one.
    pub fn checkin(&self, key: PoolKey, conn: Conn) {
        if self.is_saturated() {
            return;
        }
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            return;
        }
        list.push(Idle { conn, since: Instant::now() });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes every connection idle longer than the timeout.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        map.retain(|_, list| {
            let before = list.len();
            list.retain(|i| now.duration_since(i.since) < self.idle_timeout);
            removed += before - list.len();
            !list.is_empty()
        });
        self.count.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Purges expired connections every `idle_timeout` while the pool lives.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let every = self.idle_timeout;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(pool) => pool.purge_expired(),
                    None => return,
                }
            }
        });
    }
}

/// An idle HTTP/1.1 connection must have nothing to say: a non-blocking
/// peek on the TCP socket (a direct syscall, so it sees a FIN that the
/// reactor has not reported yet) that finds EOF, an error or unasked bytes
/// means the connection cannot carry a request.
fn is_still_open(conn: &Conn) -> bool {
    let tcp = conn.tcp();
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(tcp).peek(&mut byte) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false, // 0: EOF; 1: bytes nobody asked for
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::target::{Host, Scheme};
    use crate::upstream::Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    const LIMIT: SlotLimit = SlotLimit { max: 4, wait: Duration::from_secs(1) };

    fn key(port: u16) -> PoolKey {
        PoolKey {
            origin: Origin { scheme: Scheme::Http, host: Host::Name("localhost".into()), port },
            egress: Egress::Direct,
            checked: false,
        }
    }

    async fn pair(listener: &TcpListener) -> (Conn, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Conn::new(Stream::Plain(client), None), server)
    }

    #[tokio::test(start_paused = true)]
    async fn expired_connections_are_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(Duration::from_secs(20), LIMIT);
        let (conn, _server) = pair(&listener).await;
        pool.checkin(key(1), conn);
        assert_eq!(pool.idle_count(), 1);
        let conn = pool.checkout(&key(1)).expect("fresh connection is reused");
        assert!(pool.checkout(&key(2)).is_none(), "keys are separate");
        pool.checkin(key(1), conn);
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(pool.checkout(&key(1)).is_none(), "idle longer than the timeout");
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn closed_or_chatty_connections_are_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(Duration::from_secs(20), LIMIT);
        let (conn, server) = pair(&listener).await;
        pool.checkin(key(1), conn);
        drop(server); // FIN
        assert!(pool.checkout(&key(1)).is_none(), "upstream closed it");
        let (conn, mut server) = pair(&listener).await;
        pool.checkin(key(1), conn);
        server.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.unwrap();
        assert!(pool.checkout(&key(1)).is_none(), "unasked bytes");
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn purge_closes_expired_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(Duration::from_secs(1), LIMIT);
        let (conn, _server) = pair(&listener).await;
        pool.checkin(key(1), conn);
        pool.purge_expired();
        assert_eq!(pool.idle_count(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        pool.purge_expired();
        assert_eq!(pool.idle_count(), 0);
    }
}
