//! Where settled requests are kept (§11): behind [`Store`], so that a shared
//! store (Postgres, for several replicas) can follow. [`SqliteStore`] is an
//! embedded SQLite file in WAL mode with versioned migrations, written by
//! one thread off the request path: a record is committed within a second
//! of its request's end (at once when the writer is idle), a failed write
//! is kept and retried every second and counted
//! (`veilgate_store_errors_total`), and [`Store::flush`] commits everything
//! (SIGTERM). [`MemoryStore`] keeps the recent requests only.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::ledger::{Record, Totals};
use super::time::Calendar;
use crate::config::ConfigError;

/// The database file inside `data_dir`.
pub const DB_FILE: &str = "veilgate.db";
const LOCK_FILE: &str = "veilgate.lock";
/// Records held in memory while the file cannot be written; beyond this
/// the oldest are dropped (each counted as a store error).
const MAX_PENDING: usize = 1_000_000;
/// `MemoryStore` keeps this many requests for `/usage/requests`.
const MEMORY_RECENT: usize = 100_000;

/// Sums of one `(month, day, client, model)`, to fill the ledger at start.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub month: String,
    pub day: String,
    pub client: String,
    pub model: String,
    pub totals: Totals,
}

/// A place settled requests are kept.
pub trait Store: Send + Sync {
    /// Everything kept, summed per month, day, client and model.
    fn load(&self) -> Vec<Aggregate>;
    /// Keeps one record; never blocks on I/O.
    fn append(&self, record: Record);
    /// The newest requests first (all clients, or one); may block on I/O.
    fn recent(&self, client: Option<&str>, limit: usize) -> Vec<Record>;
    /// Returns once everything appended so far is kept.
    fn flush(&self);
}

/// Requests kept in memory only (`store = "memory"`).
#[derive(Default)]
pub struct MemoryStore {
    recent: Mutex<VecDeque<Record>>,
}

impl Store for MemoryStore {
    fn load(&self) -> Vec<Aggregate> {
        Vec::new()
    }

    fn append(&self, record: Record) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == MEMORY_RECENT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    fn recent(&self, client: Option<&str>, limit: usize) -> Vec<Record> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().filter(|r| client.is_none_or(|c| &*r.client == c)).take(limit).cloned().collect()
    }

    fn flush(&self) {}
}

/// Versioned migrations: `PRAGMA user_version` is how many have run.
const MIGRATIONS: &[&str] = &["CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        month TEXT NOT NULL,
        day TEXT NOT NULL,
        client TEXT NOT NULL,
        preset TEXT,
        model TEXT,
        status INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        estimated INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX requests_client_id ON requests (client, id);"];

/// What request handlers hand the writer: appending is a push under a
/// lock, and the writer is woken only when it may be idle (the first
/// record of a batch), when a batch is full, to flush, or to close — never
/// once per record.
#[derive(Default)]
struct Queue {
    state: Mutex<Handoff>,
    wake: Condvar,
}

#[derive(Default)]
struct Handoff {
    records: Vec<Record>,
    /// Flushes waiting for everything before them to be committed.
    flushes: Vec<mpsc::SyncSender<()>>,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Handoff> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A batch is committed early once this many records wait.
const BATCH_MAX: usize = 10_000;

/// The SQLite store of one `data_dir`, held exclusively by this process.
pub struct SqliteStore {
    queue: Arc<Queue>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Connection>,
    path: PathBuf,
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating and migrating) `<dir>/veilgate.db`; refused when
    /// another process holds the directory.
    pub fn open(dir: &Path, errors: Counter) -> Result<SqliteStore, ConfigError> {
        SqliteStore::open_with(dir, errors, None)
    }

    fn open_with(dir: &Path, errors: Counter, max_page_count: Option<u64>) -> Result<SqliteStore, ConfigError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| ConfigError(format!("usage store: {what}: {e}"));
        std::fs::create_dir_all(dir).map_err(|e| fail(&format!("cannot create {}", dir.display()), &e))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(|e| fail(&format!("cannot open {}", path.display()), &e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| fail("busy timeout", &e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| fail("WAL mode", &e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| fail("synchronous", &e))?;
        migrate(&mut conn).map_err(|e| fail("migrating", &e))?;
        if let Some(pages) = max_page_count {
            conn.pragma_update(None, "max_page_count", pages).map_err(|e| fail("max_page_count", &e))?;
        }
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| fail("cannot open a reader", &e))?;
        let queue = Arc::new(Queue::default());
        let theirs = Arc::clone(&queue);
        let writer = std::thread::Builder::new()
            .name("veilgate-store".into())
            .spawn(move || write_loop(conn, &theirs, errors))
            .map_err(|e| fail("cannot start the writer", &e))?;
        Ok(SqliteStore { queue, writer: Mutex::new(Some(writer)), reader: Mutex::new(reader), path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for SqliteStore {
    fn load(&self) -> Vec<Aggregate> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let sql = "SELECT month, day, client, COALESCE(model, '-'), COUNT(*), SUM(input_tokens), SUM(output_tokens),
                   SUM(cached_tokens), SUM(cache_write_tokens), SUM(cost_usd), SUM(estimated)
                   FROM requests GROUP BY month, day, client, model";
        let rows = conn.prepare(sql).and_then(|mut stmt| {
            stmt.query_map([], |row| {
                Ok(Aggregate {
                    month: row.get(0)?,
                    day: row.get(1)?,
                    client: row.get(2)?,
                    model: row.get(3)?,
                    totals: totals_at(row, 4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        });
        rows.unwrap_or_else(|e| {
            tracing::error!(error = %e, "usage store: cannot read the totals");
            Vec::new()
        })
    }

    fn append(&self, record: Record) {
        let mut q = self.queue.lock();
        if q.closed {
            drop(q);
            tracing::error!("usage store: the writer is gone; a record was not kept");
            return;
        }
        q.records.push(record);
        let wake = matches!(q.records.len(), 1 | BATCH_MAX);
        drop(q);
        if wake {
            self.queue.wake.notify_one();
        }
    }

    fn recent(&self, client: Option<&str>, limit: usize) -> Vec<Record> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let sql = "SELECT time_ms, client, preset, model, status, input_tokens, output_tokens, cached_tokens,
                   cache_write_tokens, cost_usd, estimated, attempts, duration_ms FROM requests
                   WHERE ?1 IS NULL OR client = ?1 ORDER BY id DESC LIMIT ?2";
        let rows = conn.prepare_cached(sql).and_then(|mut stmt| {
            stmt.query_map(params![client, limit as i64], |row| {
                Ok(Record {
                    time_ms: row.get(0)?,
                    client: Arc::from(row.get::<_, String>(1)?),
                    preset: row.get(2)?,
                    model: row.get(3)?,
                    status: row.get(4)?,
                    input_tokens: row.get(5)?,
                    output_tokens: row.get(6)?,
                    cached_tokens: row.get(7)?,
                    cache_write_tokens: row.get(8)?,
                    cost_usd: row.get(9)?,
                    estimated: row.get(10)?,
                    attempts: row.get(11)?,
                    duration_ms: row.get(12)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        });
        rows.unwrap_or_else(|e| {
            tracing::error!(error = %e, "usage store: cannot list requests");
            Vec::new()
        })
    }

    fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        {
            let mut q = self.queue.lock();
            if q.closed {
                return;
            }
            q.flushes.push(ack);
        }
        self.queue.wake.notify_one();
        // An error means the writer ended (its acks dropped): nothing more
        // will be kept.
        let _ = done.recv();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing makes the writer commit what is left and end.
        self.queue.lock().closed = true;
        self.queue.wake.notify_one();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

/// Takes `<dir>/veilgate.lock` for this process (released when it exits,
/// even by SIGKILL): a second veilgate on the same directory is refused.
fn lock_dir(dir: &Path) -> Result<File, ConfigError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ConfigError(format!("usage store: cannot open {}: {e}", path.display())))?;
    #[cfg(unix)]
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        ConfigError(format!("another veilgate is running on data_dir {} (it holds {LOCK_FILE})", dir.display()))
    })?;
    Ok(file)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the database is from a newer veilgate (schema {version}, this one knows {})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn totals_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Totals> {
    Ok(Totals {
        requests: row.get(at)?,
        input_tokens: row.get(at + 1)?,
        output_tokens: row.get(at + 2)?,
        cached_tokens: row.get(at + 3)?,
        cache_write_tokens: row.get(at + 4)?,
        cost_usd: row.get(at + 5)?,
        estimated_requests: row.get(at + 6)?,
    })
}

/// How long the writer gathers records after the first before it commits
/// them in one transaction (a commit per request would cost more than the
/// request); a flush commits at once.
const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// A failed commit is retried after this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The writer: gathers what arrives for [`BATCH_WINDOW`] after the first
/// record, commits it in one transaction; a failed commit keeps the batch
/// and is retried every [`RETRY_AFTER`]. Flushes and closing commit at once.
// Never inlined: benches/instructions.py finds the writer's share by name.
#[inline(never)]
fn write_loop(mut conn: Connection, queue: &Queue, errors: Counter) {
    // However the writer ends (a panic too), appending stops and waiting
    // flushes return.
    struct Ended<'a>(&'a Queue);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            let mut q = self.0.lock();
            q.closed = true;
            q.flushes.clear();
        }
    }
    let _ended = Ended(queue);
    let mut calendar = Calendar::default();
    let mut pending: Vec<Record> = Vec::new();
    let mut failing = false;
    loop {
        let (acks, closed) = {
            let mut q = queue.lock();
            if failing {
                // The retry, sooner for a flush or closing.
                let retry = Instant::now() + RETRY_AFTER;
                while q.flushes.is_empty() && !q.closed {
                    let left = retry.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    q = queue.wake.wait_timeout(q, left).unwrap_or_else(|p| p.into_inner()).0;
                }
            } else {
                // Idle until something arrives, then the batch window,
                // unless a flush or closing cuts it short.
                while q.records.is_empty() && q.flushes.is_empty() && !q.closed {
                    q = queue.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                let deadline = Instant::now() + BATCH_WINDOW;
                while q.flushes.is_empty() && !q.closed && q.records.len() < BATCH_MAX {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    q = queue.wake.wait_timeout(q, left).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
            if pending.is_empty() {
                pending = std::mem::take(&mut q.records);
            } else {
                pending.append(&mut q.records);
            }
            (std::mem::take(&mut q.flushes), q.closed)
        };
        if !pending.is_empty() {
            match insert(&mut conn, &pending, &mut calendar) {
                Ok(()) => {
                    pending.clear();
                    failing = false;
                }
                Err(e) => {
                    failing = true;
                    errors.inc();
                    tracing::error!(error = %e, held = pending.len(), "usage store: write failed; retrying");
                    if pending.len() > MAX_PENDING {
                        let over = pending.len() - MAX_PENDING;
                        pending.drain(..over);
                        errors.inc_by(over as u64);
                    }
                }
            }
        }
        // A flush is answered once its records were tried (kept, or
        // counted as errors while the file cannot be written).
        for ack in acks {
            let _ = ack.send(());
        }
        if closed {
            // Appending stopped with `closed`; a batch that cannot be
            // written at exit was in memory only.
            return;
        }
    }
}

fn insert(conn: &mut Connection, records: &[Record], calendar: &mut Calendar) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO requests (time_ms, month, day, client, preset, model, status, input_tokens,
             output_tokens, cached_tokens, cache_write_tokens, cost_usd, estimated, attempts, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        for r in records {
            let (month, day) = calendar.at(r.time_ms);
            stmt.execute(params![
                r.time_ms,
                month,
                day,
                &*r.client,
                r.preset,
                r.model,
                r.status,
                r.input_tokens as i64,
                r.output_tokens as i64,
                r.cached_tokens as i64,
                r.cache_write_tokens as i64,
                r.cost_usd,
                r.estimated,
                r.attempts,
                r.duration_ms as i64,
            ])?;
        }
    }
    tx.commit()
}

/// `veilgate usage`: each client's totals of `month` from the file, read
/// only (also while a server runs).
pub fn month_totals(dir: &Path, month: &str, client: Option<&str>) -> Result<Vec<(String, Totals)>, ConfigError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Err(ConfigError(format!("no usage store at {}", path.display())));
    }
    let fail = |e: rusqlite::Error| ConfigError(format!("reading {}: {e}", path.display()));
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    let has_table = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE name = 'requests'", [], |_| Ok(()))
        .optional()
        .map_err(fail)?;
    if has_table.is_none() {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(
            "SELECT client, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens),
             SUM(cache_write_tokens), SUM(cost_usd), SUM(estimated) FROM requests
             WHERE month = ?1 AND (?2 IS NULL OR client = ?2) GROUP BY client ORDER BY client",
        )
        .map_err(fail)?;
    let rows = stmt
        .query_map(params![month, client], |row| Ok((row.get::<_, String>(0)?, totals_at(row, 1)?)))
        .map_err(fail)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(client: &str, time_ms: i64, input: u64) -> Record {
        Record {
            time_ms,
            client: Arc::from(client),
            preset: Some("openai".into()),
            model: Some("gpt-4o-mini".into()),
            status: 200,
            input_tokens: input,
            output_tokens: 2,
            cached_tokens: 1,
            cache_write_tokens: 0,
            cost_usd: 0.5,
            estimated: input == 0,
            attempts: 1,
            duration_ms: 7,
        }
    }

    const DEC: i64 = 1_796_128_496_000;

    #[test]
    fn records_survive_reopening_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Counter::default()).unwrap();
        let second = SqliteStore::open(dir.path(), Counter::default());
        assert!(second.is_err_and(|e| e.0.contains("another veilgate")));
        store.append(record("alice", DEC, 10));
        store.append(record("alice", DEC + 1, 0));
        store.append(record("bob", DEC + 2, 3));
        store.flush();
        let recent = store.recent(Some("alice"), 10);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0], record("alice", DEC + 1, 0), "newest first, every field back");
        assert_eq!(store.recent(None, 1)[0].client.as_ref(), "bob");
        drop(store);

        let store = SqliteStore::open(dir.path(), Counter::default()).unwrap();
        let mut agg = store.load();
        agg.sort_by(|a, b| a.client.cmp(&b.client));
        assert_eq!(agg.len(), 2);
        assert_eq!((agg[0].client.as_str(), agg[0].totals.requests, agg[0].totals.input_tokens), ("alice", 2, 10));
        assert_eq!(agg[0].totals.estimated_requests, 1);
        assert_eq!((agg[0].month.as_str(), agg[0].day.as_str()), ("2026-12", "2026-12-01"));
        let totals = month_totals(dir.path(), "2026-12", None).unwrap();
        assert_eq!(
            totals.iter().map(|(c, t)| (c.as_str(), t.requests)).collect::<Vec<_>>(),
            [("alice", 2), ("bob", 1)]
        );
        assert!(month_totals(dir.path(), "2026-11", None).unwrap().is_empty());
    }

    #[test]
    fn a_full_disk_is_counted_and_the_records_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let errors = Counter::default();
        // A database that may not grow past its first pages: "disk full".
        let store = SqliteStore::open_with(dir.path(), errors.clone(), Some(1)).unwrap();
        for i in 0..2000 {
            store.append(record("alice", DEC + i, 5));
        }
        store.flush();
        assert!(errors.get() >= 1, "the failed write is counted");
        assert!(store.recent(None, 5000).len() < 2000, "not everything could be written");
        drop(store);
        // The same directory, room again: nothing kept back is a problem.
        let store = SqliteStore::open(dir.path(), Counter::default()).unwrap();
        let before = store.recent(None, 5000).len();
        store.append(record("alice", DEC, 5));
        store.flush();
        assert_eq!(store.recent(None, 5000).len(), before + 1);
    }

    #[test]
    fn memory_store_lists_newest_first() {
        let store = MemoryStore::default();
        store.append(record("alice", DEC, 1));
        store.append(record("bob", DEC + 1, 2));
        assert_eq!(store.recent(None, 10).len(), 2);
        assert_eq!(store.recent(Some("alice"), 10)[0].input_tokens, 1);
        assert!(store.load().is_empty());
    }
}
