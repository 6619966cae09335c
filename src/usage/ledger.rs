//! The ledger: every client's usage this month and in the rolling minute,
//! what is reserved for requests in flight, and the month totals `/usage`
//! answers from — all in memory, behind one lock, so check-and-reserve is
//! atomic per client. The [`Store`] is told of each settled request and
//! writes it off the request path; at start the ledger is filled from it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::store::{Aggregate, Store};
use super::time::{Calendar, month_end};

/// A client's limits (`[clients.limits]`, `[auth.jwt_limits]`, read from
/// the file as they are); all optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// One finished request, as the store keeps it and `/usage/requests`
/// lists it: never a body, path or key.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub time_ms: i64,
    pub client: Arc<str>,
    pub preset: Option<String>,
    pub model: Option<String>,
    /// The HTTP status the client got.
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    pub estimated: bool,
    /// Upstream attempts.
    pub attempts: u32,
    pub duration_ms: u64,
}

/// Sums over requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    pub estimated_requests: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_tokens += o.cached_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.cost_usd += o.cost_usd;
        self.estimated_requests += o.estimated_requests;
    }

    fn of(r: &Record) -> Totals {
        Totals {
            requests: 1,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_tokens: r.cached_tokens,
            cache_write_tokens: r.cache_write_tokens,
            cost_usd: r.cost_usd,
            estimated_requests: u64::from(r.estimated),
        }
    }

    /// Input + output, what `monthly_tokens` counts.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// One client's month: its totals, by model and by day.
#[derive(Clone, Debug, Default)]
pub struct ClientMonth {
    pub totals: Totals,
    pub by_model: BTreeMap<String, Totals>,
    pub by_day: BTreeMap<String, Totals>,
}

impl ClientMonth {
    fn add(&mut self, day: &str, model: &str, t: &Totals) {
        self.totals.add(t);
        match self.by_model.get_mut(model) {
            Some(m) => m.add(t),
            None => {
                self.by_model.insert(model.to_owned(), *t);
            }
        }
        match self.by_day.get_mut(day) {
            Some(d) => d.add(t),
            None => {
                self.by_day.insert(day.to_owned(), *t);
            }
        }
    }
}

/// What a request asks to reserve before it is forwarded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ask {
    pub tokens: u64,
    /// `None` when the model has no price.
    pub cost: Option<f64>,
}

/// A limit that refused a request, and when it resets (Unix ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub limit: &'static str,
    pub reset_ms: i64,
}

/// What is held for a request in flight; settled with [`Ledger::settle`].
#[derive(Debug)]
pub struct Reservation {
    /// The client's month figures before this request.
    pub before: Totals,
    client: Arc<str>,
    id: u64,
    tokens: u64,
    cost: f64,
}

/// A request in the rolling minute.
#[derive(Debug)]
struct Recent {
    at_ms: i64,
    id: u64,
    tokens: u64,
}

/// A client's requests in flight and its last minute.
#[derive(Debug, Default)]
struct Live {
    requests: u64,
    tokens: u64,
    cost: f64,
    minute: VecDeque<Recent>,
    /// The sum of `minute`'s tokens.
    minute_tokens: u64,
}

impl Live {
    fn prune(&mut self, now_ms: i64) {
        while let Some(r) = self.minute.front().filter(|r| r.at_ms <= now_ms - 60_000) {
            self.minute_tokens -= r.tokens;
            self.minute.pop_front();
        }
    }
}

/// A client's counters since start (the `veilgate_client_*` metrics).
#[derive(Debug, Default)]
struct Counters {
    by_status: Vec<(u16, u64)>,
    input: u64,
    output: u64,
    cached: u64,
    cache_write: u64,
    cost: f64,
}

/// Everything the ledger knows of one client: found with one lookup per
/// reservation and one per settlement.
#[derive(Debug, Default)]
struct Book {
    live: Live,
    counters: Counters,
    /// Month (`YYYY-MM`) → figures.
    months: BTreeMap<String, ClientMonth>,
}

impl Book {
    fn month(&self, month: &str) -> Totals {
        self.months.get(month).map(|c| c.totals).unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    books: HashMap<Arc<str>, Book, foldhash::fast::RandomState>,
    next_id: u64,
    calendar: Calendar,
}

/// The ledger of every client; one per server.
pub struct Ledger {
    inner: Mutex<Inner>,
    store: Box<dyn Store>,
}

impl Ledger {
    /// A ledger filled from what `store` holds.
    pub fn new(store: Box<dyn Store>) -> Ledger {
        let mut inner = Inner::default();
        for Aggregate { month, day, client, model, totals } in store.load() {
            let client: Arc<str> = Arc::from(client);
            let cm = inner.books.entry(client).or_default().months.entry(month).or_default();
            cm.add(&day, &model, &totals);
        }
        Ledger { inner: Mutex::new(inner), store }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves consistent figures (every
        // update is a few additions): carry on with them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Checks `client`'s limits and reserves for one request, atomically:
    /// admitted while used + reserved is below every limit; the
    /// reservation is capped at what is left.
    pub fn reserve(&self, client: &Arc<str>, limits: &Limits, ask: Ask, now_ms: i64) -> Result<Reservation, Refusal> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (month, _) = inner.calendar.at(now_ms);
        inner.next_id += 1;
        let id = inner.next_id;
        let book = match inner.books.get_mut(client) {
            Some(b) => b,
            None => inner.books.entry(Arc::clone(client)).or_default(),
        };
        let used = book.month(month);
        let live = &mut book.live;
        live.prune(now_ms);
        let month_reset = month_end(now_ms);
        let minute_reset = live.minute.front().map_or(now_ms + 60_000, |r| r.at_ms + 60_000);
        let minute_tokens = live.minute_tokens;
        let minute_requests = live.minute.len() as u64;

        let mut tokens = ask.tokens;
        let mut cost = ask.cost.unwrap_or(0.0);
        if let Some(max) = limits.monthly_requests
            && used.requests + live.requests >= max
        {
            return Err(Refusal { limit: "monthly_requests", reset_ms: month_reset });
        }
        if let Some(max) = limits.monthly_tokens {
            let held = used.tokens() + live.tokens;
            if held >= max {
                return Err(Refusal { limit: "monthly_tokens", reset_ms: month_reset });
            }
            tokens = tokens.min(max - held);
        }
        if let Some(max) = limits.monthly_cost_usd {
            let held = used.cost_usd + live.cost;
            if held >= max {
                return Err(Refusal { limit: "monthly_cost_usd", reset_ms: month_reset });
            }
            cost = cost.min(max - held);
        }
        if let Some(max) = limits.requests_per_minute
            && minute_requests >= max
        {
            return Err(Refusal { limit: "requests_per_minute", reset_ms: minute_reset });
        }
        if let Some(max) = limits.tokens_per_minute {
            if minute_tokens >= max {
                return Err(Refusal { limit: "tokens_per_minute", reset_ms: minute_reset });
            }
            tokens = tokens.min(max - minute_tokens);
        }
        live.requests += 1;
        live.tokens += tokens;
        live.cost += cost;
        // The minute is only kept for clients with a per-minute limit.
        let in_minute = limits.requests_per_minute.is_some() || limits.tokens_per_minute.is_some();
        if in_minute {
            live.minute.push_back(Recent { at_ms: now_ms, id, tokens });
            live.minute_tokens += tokens;
        }
        Ok(Reservation { before: used, client: Arc::clone(client), id, tokens, cost })
    }

    /// Replaces a reservation by what the request counted, and hands the
    /// record to the store. `reservation` is `None` for a client without
    /// limits (nothing was held).
    /// Returns the client's month figures with this request.
    pub fn settle(&self, reservation: Option<Reservation>, record: Record) -> Totals {
        let after = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let (month, day) = inner.calendar.at(record.time_ms);
            let book = match inner.books.get_mut(&record.client) {
                Some(b) => b,
                None => inner.books.entry(Arc::clone(&record.client)).or_default(),
            };
            if let Some(r) = reservation {
                debug_assert_eq!(r.client, record.client, "a reservation is settled by its own client");
                let live = &mut book.live;
                live.requests = live.requests.saturating_sub(1);
                live.tokens = live.tokens.saturating_sub(r.tokens);
                live.cost = (live.cost - r.cost).max(0.0);
                // Ids grow with time: the window is sorted by them.
                if let Ok(i) = live.minute.binary_search_by_key(&r.id, |m| m.id)
                    && let Some(recent) = live.minute.get_mut(i)
                {
                    let counted = record.input_tokens + record.output_tokens;
                    live.minute_tokens = live.minute_tokens - recent.tokens + counted;
                    recent.tokens = counted;
                }
            }
            let cm = match book.months.get_mut(month) {
                Some(m) => m,
                None => book.months.entry(month.to_owned()).or_default(),
            };
            cm.add(day, record.model.as_deref().unwrap_or("-"), &Totals::of(&record));
            let totals = cm.totals;
            let c = &mut book.counters;
            match c.by_status.iter_mut().find(|(s, _)| *s == record.status) {
                Some((_, n)) => *n += 1,
                None => c.by_status.push((record.status, 1)),
            }
            c.input += record.input_tokens;
            c.output += record.output_tokens;
            c.cached += record.cached_tokens;
            c.cache_write += record.cache_write_tokens;
            c.cost += record.cost_usd;
            totals
        };
        self.store.append(record);
        after
    }

    /// A client's totals in the month of `now_ms` (for response headers).
    pub fn month_totals(&self, client: &str, now_ms: i64) -> Totals {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (month, _) = inner.calendar.at(now_ms);
        inner.books.get(client).map(|b| b.month(month)).unwrap_or_default()
    }

    /// The `veilgate_client_*` families in the OpenMetrics text format
    /// (kept here, under the lock settling takes anyway, instead of in the
    /// registry: a label lookup per request costs more than the request's
    /// accounting).
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let inner = self.lock();
        // Clients that settled something since start.
        let mut clients: Vec<(&Arc<str>, &Counters)> = inner
            .books
            .iter()
            .filter(|(_, b)| !b.counters.by_status.is_empty())
            .map(|(k, b)| (k, &b.counters))
            .collect();
        clients.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::new();
        out.push_str("# HELP veilgate_client_requests Requests of each client, by status.\n");
        out.push_str("# TYPE veilgate_client_requests counter\n");
        for (name, c) in &clients {
            for (status, n) in &c.by_status {
                let _ = writeln!(out, "veilgate_client_requests_total{{client=\"{name}\",status=\"{status}\"}} {n}");
            }
        }
        out.push_str("# HELP veilgate_client_tokens Tokens of each client's requests, by kind.\n");
        out.push_str("# TYPE veilgate_client_tokens counter\n");
        for (name, c) in &clients {
            for (kind, n) in
                [("input", c.input), ("output", c.output), ("cached", c.cached), ("cache_write", c.cache_write)]
            {
                let _ = writeln!(out, "veilgate_client_tokens_total{{client=\"{name}\",kind=\"{kind}\"}} {n}");
            }
        }
        out.push_str("# HELP veilgate_client_cost_usd Cost of each client's requests in USD.\n");
        out.push_str("# TYPE veilgate_client_cost_usd counter\n");
        for (name, c) in &clients {
            let _ = writeln!(out, "veilgate_client_cost_usd_total{{client=\"{name}\"}} {}", c.cost);
        }
        out
    }

    /// Every client's figures of `month` (or one client's), cloned out of
    /// the lock.
    pub fn month(&self, month: &str, client: Option<&str>) -> Vec<(Arc<str>, ClientMonth)> {
        let inner = self.lock();
        let of = |(name, book): (&Arc<str>, &Book)| book.months.get(month).map(|m| (Arc::clone(name), m.clone()));
        match client {
            Some(c) => inner.books.get_key_value(c).and_then(of).into_iter().collect(),
            None => inner.books.iter().filter_map(of).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::store::MemoryStore;

    const DEC: i64 = 1_796_128_496_000; // 2026-12-01T12:34:56Z

    fn record(client: &Arc<str>, time_ms: i64, input: u64, output: u64, cost: f64) -> Record {
        Record {
            time_ms,
            client: Arc::clone(client),
            preset: Some("openai".into()),
            model: Some("gpt-4o-mini".into()),
            status: 200,
            input_tokens: input,
            output_tokens: output,
            cached_tokens: 0,
            cache_write_tokens: 0,
            cost_usd: cost,
            estimated: false,
            attempts: 1,
            duration_ms: 5,
        }
    }

    fn ledger() -> Ledger {
        Ledger::new(Box::new(MemoryStore::default()))
    }

    #[test]
    fn one_request_left_admits_exactly_one() {
        let l = ledger();
        let alice: Arc<str> = Arc::from("alice");
        let limits = Limits { monthly_requests: Some(3), ..Limits::default() };
        let ask = Ask { tokens: 10, cost: None };
        for _ in 0..2 {
            let r = l.reserve(&alice, &limits, ask, DEC).unwrap();
            l.settle(Some(r), record(&alice, DEC, 5, 5, 0.0));
        }
        let held = l.reserve(&alice, &limits, ask, DEC).unwrap();
        let refused = l.reserve(&alice, &limits, ask, DEC).unwrap_err();
        assert_eq!(refused.limit, "monthly_requests");
        assert_eq!(refused.reset_ms, month_end(DEC));
        l.settle(Some(held), record(&alice, DEC, 5, 5, 0.0));
        assert!(l.reserve(&alice, &limits, ask, DEC).is_err());
        // Next month starts over.
        assert!(l.reserve(&alice, &limits, ask, month_end(DEC)).is_ok());
        // Another client is not touched.
        assert!(l.reserve(&Arc::from("bob"), &limits, ask, DEC).is_ok());
    }

    #[test]
    fn a_large_estimate_is_capped_at_what_is_left() {
        let l = ledger();
        let alice: Arc<str> = Arc::from("alice");
        let limits = Limits { monthly_tokens: Some(1000), monthly_cost_usd: Some(1.0), ..Limits::default() };
        let r = l.reserve(&alice, &limits, Ask { tokens: u64::MAX / 2, cost: Some(1e9) }, DEC).unwrap();
        assert_eq!((r.tokens, r.cost), (1000, 1.0));
        // Everything is held: the next one waits.
        assert_eq!(
            l.reserve(&alice, &limits, Ask { tokens: 1, cost: Some(0.0) }, DEC).unwrap_err().limit,
            "monthly_tokens"
        );
        l.settle(Some(r), record(&alice, DEC, 100, 50, 0.25));
        let t = l.month_totals("alice", DEC);
        assert_eq!((t.requests, t.tokens(), t.cost_usd), (1, 150, 0.25));
        let r = l.reserve(&alice, &limits, Ask { tokens: 5000, cost: Some(5.0) }, DEC).unwrap();
        assert_eq!((r.tokens, r.cost), (850, 0.75));
        l.settle(Some(r), record(&alice, DEC, 900, 0, 0.8));
        assert_eq!(
            l.reserve(&alice, &limits, Ask { tokens: 1, cost: Some(0.0) }, DEC).unwrap_err().limit,
            "monthly_tokens"
        );
    }

    #[test]
    fn the_minute_rolls() {
        let l = ledger();
        let alice: Arc<str> = Arc::from("alice");
        let limits = Limits { requests_per_minute: Some(2), tokens_per_minute: Some(100), ..Limits::default() };
        let ask = Ask { tokens: 10, cost: None };
        let a = l.reserve(&alice, &limits, ask, DEC).unwrap();
        let b = l.reserve(&alice, &limits, ask, DEC + 1000).unwrap();
        let refused = l.reserve(&alice, &limits, ask, DEC + 2000).unwrap_err();
        assert_eq!(refused, Refusal { limit: "requests_per_minute", reset_ms: DEC + 60_000 });
        l.settle(Some(a), record(&alice, DEC, 60, 40, 0.0));
        l.settle(Some(b), record(&alice, DEC, 1, 1, 0.0));
        // a left the window; its 100 tokens with it.
        let c = l.reserve(&alice, &limits, ask, DEC + 60_000).unwrap();
        l.settle(Some(c), record(&alice, DEC, 50, 50, 0.0));
        assert_eq!(l.reserve(&alice, &limits, ask, DEC + 60_500).unwrap_err().limit, "requests_per_minute");
        let lim = Limits { tokens_per_minute: Some(100), ..Limits::default() };
        assert_eq!(l.reserve(&alice, &lim, ask, DEC + 60_500).unwrap_err().limit, "tokens_per_minute");
    }

    #[test]
    fn month_figures_by_model_and_day() {
        let l = ledger();
        let alice: Arc<str> = Arc::from("alice");
        l.settle(None, record(&alice, DEC, 10, 5, 0.1));
        let mut other = record(&alice, DEC + 86_400_000, 1, 1, 0.2);
        other.model = Some("claude-x".into());
        other.estimated = true;
        l.settle(None, other);
        let m = l.month("2026-12", None);
        assert_eq!(m.len(), 1);
        let cm = &m[0].1;
        assert_eq!(cm.totals.requests, 2);
        assert_eq!(cm.totals.estimated_requests, 1);
        assert_eq!(cm.by_model.len(), 2);
        assert_eq!(cm.by_day.keys().cloned().collect::<Vec<_>>(), ["2026-12-01", "2026-12-02"]);
        assert!(l.month("2026-11", None).is_empty());
        assert!(l.month("2026-12", Some("bob")).is_empty());
    }
}
