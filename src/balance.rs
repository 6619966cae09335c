//! Several targets per preset (SPEC §13): the order one request tries them
//! in (`strategy`), when it goes again (`retry`), and which targets sit out
//! for a while (`[health]`). The decisions are pure functions of the state
//! here and the time they are given; the proxy carries them out.
//!
//! The state outlives requests and is handed on by a reload to the preset
//! that keeps the same targets, so a reload never readmits an ejected
//! target or forgets a latency.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How a preset orders its targets for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Failover order: the first healthy target, the next on failure.
    Ordered,
    RoundRobin,
    /// Random, in proportion to `weights`, for the first; the rest in order.
    Weighted,
    /// Power of two choices: of two random healthy targets the one with the
    /// lower latency EWMA × (requests pending + 1) first.
    P2c,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "ordered" => Strategy::Ordered,
            "round-robin" => Strategy::RoundRobin,
            "weighted" => Strategy::Weighted,
            "p2c" => Strategy::P2c,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Ordered => "ordered",
            Strategy::RoundRobin => "round-robin",
            Strategy::Weighted => "weighted",
            Strategy::P2c => "p2c",
        }
    }
}

/// When an attempt goes again (§13 "retrying safely").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per target (1: none again on the same target).
    pub attempts: u32,
    /// Statuses that are tried again.
    pub on: Vec<u16>,
    /// The first backoff; doubled per attempt, with jitter.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { attempts: 1, on: vec![429, 500, 502, 503, 504], backoff: Duration::from_millis(250) }
    }
}

/// The longest `retry-after` honoured before going again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl Retry {
    /// The wait before attempt `n + 1` on the same target (`n` ≥ 1 made):
    /// `retry-after` when the answer gave one (capped), else the backoff
    /// doubled per attempt, drawn from its upper half (`jitter` in 0..1).
    pub fn wait(&self, n: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(after) = retry_after {
            return after.min(MAX_RETRY_AFTER);
        }
        let full = self.backoff.saturating_mul(1u32 << (n.saturating_sub(1)).min(16));
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)).min(MAX_RETRY_AFTER)
    }
}

/// A preset's settings for several targets and for going again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    pub strategy: Strategy,
    /// Per target (`weighted`); missing ones weigh 1.
    pub weights: Vec<u32>,
    pub retry: Retry,
    /// From the request written to the first event of a stream.
    pub first_token_timeout: Option<Duration>,
    /// Send a request that was written and never answered once more, to
    /// another target (the provider may have billed the first).
    pub retry_unanswered: bool,
}

impl Default for Failover {
    fn default() -> Failover {
        Failover {
            strategy: Strategy::RoundRobin,
            weights: Vec::new(),
            retry: Retry::default(),
            first_token_timeout: None,
            retry_unanswered: false,
        }
    }
}

impl Failover {
    /// True when a request of a preset with `targets` targets is sent once
    /// and that is all (nothing to order, nothing to repeat).
    pub fn is_single_shot(&self, targets: usize) -> bool {
        targets <= 1 && self.retry.attempts <= 1 && self.first_token_timeout.is_none()
    }
}

/// `[health]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    pub eject_after: u32,
    pub eject_for: Duration,
    pub max_eject: Duration,
}

impl Default for HealthSettings {
    fn default() -> HealthSettings {
        HealthSettings {
            eject_after: 3,
            eject_for: Duration::from_millis(2000),
            max_eject: Duration::from_millis(30_000),
        }
    }
}

/// What one attempt on a target says about its health.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Answered (anything but a 5xx or a 429), in this time.
    Answered(Duration),
    /// A connection or TLS failure, a timeout, a 5xx.
    Failed,
    /// Says nothing of the target: a 429 (it works, it is busy), or a
    /// failure of veilgate's side (an exit, the target check, a full pool).
    Neutral,
}

#[derive(Debug, Default)]
struct TargetHealth {
    consecutive_failures: u32,
    /// Out until then; once passed, the next request probes it.
    ejected_until: Option<Instant>,
    ejected_at: Option<Instant>,
    /// Ejections since it last answered (the doubling).
    ejections: u32,
    /// Latency EWMA in ms (0: none measured yet).
    ewma_ms: f64,
    pending: u32,
}

/// The state of one preset's targets.
#[derive(Debug)]
pub struct Balance {
    targets: Vec<Mutex<TargetHealth>>,
    next: AtomicUsize,
}

/// The weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

impl Balance {
    pub fn new(targets: usize) -> Balance {
        Balance {
            targets: (0..targets).map(|_| Mutex::new(TargetHealth::default())).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn with<R>(&self, i: usize, f: impl FnOnce(&mut TargetHealth) -> R) -> Option<R> {
        let slot = self.targets.get(i)?;
        Some(f(&mut slot.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// True while target `i` is ejected at `now`.
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.with(i, |t| t.ejected_until.is_some_and(|until| until > now)).unwrap_or(false)
    }

    /// The targets one request tries, in order: the healthy ones (an
    /// ejected one whose time is up is healthy again: its next request is
    /// the probe) by `strategy`; when every target is ejected, only the one
    /// ejected longest ago. `random` draws from 0..1.
    pub fn order(
        &self,
        strategy: Strategy,
        weights: &[u32],
        now: Instant,
        mut random: impl FnMut() -> f64,
    ) -> Vec<usize> {
        let mut healthy: Vec<usize> = (0..self.len()).filter(|&i| !self.is_ejected(i, now)).collect();
        if healthy.is_empty() {
            let oldest = (0..self.len()).min_by_key(|&i| self.with(i, |t| t.ejected_at).flatten());
            return oldest.into_iter().collect();
        }
        match strategy {
            Strategy::Ordered => {}
            Strategy::RoundRobin => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
                healthy.rotate_left(turn);
            }
            Strategy::Weighted => {
                let weight = |i: usize| f64::from(weights.get(i).copied().unwrap_or(1));
                let total: f64 = healthy.iter().map(|&i| weight(i)).sum();
                let mut point = random() * total;
                let mut first = healthy.len() - 1;
                for (at, &i) in healthy.iter().enumerate() {
                    if point < weight(i) {
                        first = at;
                        break;
                    }
                    point -= weight(i);
                }
                let chosen = healthy.remove(first);
                healthy.insert(0, chosen);
            }
            Strategy::P2c => {
                let score =
                    |i: usize| self.with(i, |t| t.ewma_ms.max(1.0) * f64::from(t.pending + 1)).unwrap_or(f64::MAX);
                if healthy.len() >= 2 {
                    let n = healthy.len();
                    let a = ((random() * n as f64) as usize).min(n - 1);
                    let mut b = ((random() * (n - 1) as f64) as usize).min(n - 2);
                    if b >= a {
                        b += 1;
                    }
                    let better = if score(healthy[b]) < score(healthy[a]) { b } else { a };
                    let chosen = healthy.remove(better);
                    healthy.sort_by(|&x, &y| score(x).total_cmp(&score(y)));
                    healthy.insert(0, chosen);
                }
            }
        }
        healthy
    }

    /// An attempt on target `i` starts (p2c counts what is pending).
    pub fn started(&self, i: usize) {
        self.with(i, |t| t.pending += 1);
    }

    /// An attempt on target `i` ended with `outcome` at `now`.
    pub fn record(&self, i: usize, outcome: Outcome, now: Instant, settings: &HealthSettings) {
        self.with(i, |t| {
            t.pending = t.pending.saturating_sub(1);
            match outcome {
                Outcome::Answered(took) => {
                    let ms = took.as_secs_f64() * 1000.0;
                    t.ewma_ms = if t.ewma_ms == 0.0 { ms } else { EWMA_ALPHA * ms + (1.0 - EWMA_ALPHA) * t.ewma_ms };
                    // Readmitted (a probe that worked), the doubling reset.
                    *t = TargetHealth { ewma_ms: t.ewma_ms, pending: t.pending, ..TargetHealth::default() };
                }
                Outcome::Neutral => {}
                Outcome::Failed => {
                    t.consecutive_failures += 1;
                    // A probe that failed goes out again at once.
                    let probing = t.ejected_until.is_some_and(|until| until <= now);
                    if probing || t.consecutive_failures >= settings.eject_after.max(1) {
                        t.ejections += 1;
                        let doubled = settings.eject_for.saturating_mul(1u32 << (t.ejections - 1).min(16));
                        t.ejected_until = Some(now + doubled.min(settings.max_eject));
                        t.ejected_at = Some(now);
                        t.consecutive_failures = 0;
                    }
                }
            }
        });
    }

    /// How long target `i` is still out at `now` (zero: in).
    pub fn ejected_for(&self, i: usize, now: Instant) -> Duration {
        self.with(i, |t| t.ejected_until.map(|u| u.saturating_duration_since(now))).flatten().unwrap_or_default()
    }
}

/// A token bucket holding up to `per_minute`, refilled continuously at
/// that rate; it starts full (§13).
#[derive(Debug)]
pub struct Bucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    per_minute: u64,
    level: f64,
    at: Instant,
}

impl BucketState {
    fn refill(&mut self, now: Instant) {
        let rate = self.per_minute as f64 / 60.0;
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.level = (self.level + gained).min(self.per_minute as f64);
        self.at = now;
    }
}

impl Bucket {
    pub fn new(per_minute: u64, now: Instant) -> Bucket {
        Bucket { state: Mutex::new(BucketState { per_minute, level: per_minute as f64, at: now }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn per_minute(&self) -> u64 {
        self.lock().per_minute
    }

    /// Takes `amount` (capped at the bucket's size, so that any request
    /// fits a full bucket), or says how long until it would fit.
    pub fn take(&self, amount: u64, now: Instant) -> Result<(), Duration> {
        let mut s = self.lock();
        s.refill(now);
        let want = amount.min(s.per_minute) as f64;
        if s.level >= want {
            s.level -= want;
            return Ok(());
        }
        let rate = s.per_minute as f64 / 60.0;
        Err(Duration::from_secs_f64(((want - s.level) / rate.max(f64::MIN_POSITIVE)).min(60.0)))
    }

    /// Gives back what [`Bucket::take`] took (the other bucket refused).
    pub fn refund(&self, amount: u64) {
        let mut s = self.lock();
        s.level = (s.level + amount.min(s.per_minute) as f64).min(s.per_minute as f64);
    }

    /// A reload changed the limit: what was used stays used.
    pub fn resize(&self, per_minute: u64, now: Instant) {
        let mut s = self.lock();
        s.refill(now);
        let used = s.per_minute as f64 - s.level;
        s.per_minute = per_minute;
        s.level = (per_minute as f64 - used).max(0.0);
    }
}

/// `requests_per_minute` and `tokens_per_minute` of a preset or alias.
#[derive(Debug, Default)]
pub struct RateLimits {
    pub requests: Option<Bucket>,
    pub tokens: Option<Bucket>,
}

impl RateLimits {
    pub fn new(requests: Option<u64>, tokens: Option<u64>, now: Instant) -> RateLimits {
        RateLimits { requests: requests.map(|r| Bucket::new(r, now)), tokens: tokens.map(|t| Bucket::new(t, now)) }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// One request of about `tokens` tokens, from both buckets or neither;
    /// `Err` names the limit and how long until the request would fit.
    pub fn admit(&self, tokens: u64, now: Instant) -> Result<(), (&'static str, Duration)> {
        if let Some(r) = &self.requests {
            r.take(1, now).map_err(|wait| ("requests_per_minute", wait))?;
        }
        if let Some(t) = &self.tokens
            && let Err(wait) = t.take(tokens, now)
        {
            if let Some(r) = &self.requests {
                r.refund(1);
            }
            return Err(("tokens_per_minute", wait));
        }
        Ok(())
    }

    /// This configuration's limits, keeping what `old` used when both
    /// limit the same thing (a reload never refills a bucket).
    pub fn carried(requests: Option<u64>, tokens: Option<u64>, old: Option<&RateLimits>, now: Instant) -> RateLimits {
        let keep = |want: Option<u64>, had: Option<&Bucket>| -> Option<Bucket> {
            let want = want?;
            let Some(had) = had else { return Some(Bucket::new(want, now)) };
            let copy = {
                let s = had.lock();
                BucketState { per_minute: s.per_minute, level: s.level, at: s.at }
            };
            let bucket = Bucket { state: Mutex::new(copy) };
            bucket.resize(want, now);
            Some(bucket)
        };
        RateLimits {
            requests: keep(requests, old.and_then(|o| o.requests.as_ref())),
            tokens: keep(tokens, old.and_then(|o| o.tokens.as_ref())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_full_refill_by_the_minute_and_keep_what_was_used_on_resize() {
        let t0 = Instant::now();
        let b = Bucket::new(60, t0);
        for _ in 0..60 {
            assert!(b.take(1, t0).is_ok());
        }
        let wait = b.take(1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "one a second: {wait:?}");
        assert!(b.take(1, t0 + Duration::from_secs(1)).is_ok());
        assert!(b.take(500, t0 + Duration::from_secs(120)).is_ok(), "capped at the size: a full bucket takes it");
        // 10 used of 60; the limit becomes 20: 10 are left, not 20.
        let b = Bucket::new(60, t0);
        b.take(10, t0).unwrap();
        b.resize(20, t0);
        assert!(b.take(10, t0).is_ok());
        assert!(b.take(1, t0).is_err());
        let limits = RateLimits::new(Some(2), Some(100), t0);
        assert!(limits.admit(60, t0).is_ok());
        assert!(limits.admit(60, t0).is_err(), "tokens short");
        assert!(limits.admit(40, t0).is_ok(), "the refused one gave its request back");
        let carried = RateLimits::carried(Some(2), Some(100), Some(&limits), t0);
        assert!(carried.admit(1, t0).is_err(), "a reload never refills");
    }

    fn settings() -> HealthSettings {
        HealthSettings { eject_after: 3, eject_for: Duration::from_secs(2), max_eject: Duration::from_secs(5) }
    }

    #[test]
    fn consecutive_failures_eject_doubling_up_to_the_cap_and_an_answer_readmits() {
        let (b, s, t0) = (Balance::new(2), settings(), Instant::now());
        let fail = |at: Instant| b.record(0, Outcome::Failed, at, &s);
        fail(t0);
        fail(t0);
        b.record(0, Outcome::Neutral, t0, &s);
        assert!(!b.is_ejected(0, t0), "two failures and a 429 are not three failures");
        fail(t0);
        assert_eq!(b.ejected_for(0, t0), Duration::from_secs(2));
        assert_eq!(b.order(Strategy::Ordered, &[], t0, || 0.0), [1]);
        // Time up: the next request probes it; a failed probe doubles.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.order(Strategy::Ordered, &[], t1, || 0.0), [0, 1]);
        fail(t1);
        assert_eq!(b.ejected_for(0, t1), Duration::from_secs(4));
        let t2 = t1 + Duration::from_secs(4);
        fail(t2);
        assert_eq!(b.ejected_for(0, t2), Duration::from_secs(5), "capped at max_eject");
        let t3 = t2 + Duration::from_secs(5);
        b.record(0, Outcome::Answered(Duration::from_millis(5)), t3, &s);
        fail(t3);
        fail(t3);
        assert!(!b.is_ejected(0, t3), "readmitted with its count reset");
        fail(t3);
        assert_eq!(b.ejected_for(0, t3), Duration::from_secs(2), "and its doubling reset");
    }

    #[test]
    fn all_ejected_uses_the_one_ejected_longest_ago() {
        let (b, s, t0) = (Balance::new(3), settings(), Instant::now());
        let eject = |i: usize, at: Instant| (0..3).for_each(|_| b.record(i, Outcome::Failed, at, &s));
        eject(2, t0);
        eject(0, t0 + Duration::from_millis(10));
        eject(1, t0 + Duration::from_millis(20));
        assert_eq!(b.order(Strategy::RoundRobin, &[], t0 + Duration::from_millis(30), || 0.5), [2]);
    }

    #[test]
    fn each_strategy_orders_the_healthy_targets() {
        let (b, t0) = (Balance::new(3), Instant::now());
        assert_eq!(b.order(Strategy::Ordered, &[], t0, || 0.9), [0, 1, 2]);
        let turns: Vec<usize> = (0..4).map(|_| b.order(Strategy::RoundRobin, &[], t0, || 0.0)[0]).collect();
        assert_eq!(turns, [0, 1, 2, 0]);
        // Weighted: the point falls in the second target's share.
        assert_eq!(b.order(Strategy::Weighted, &[1, 3, 1], t0, || 0.5), [1, 0, 2]);
        assert_eq!(b.order(Strategy::Weighted, &[1, 3, 1], t0, || 0.95), [2, 0, 1]);
        // p2c: target 0 slow, 1 fast; the two picks are 0 and 1.
        let s = settings();
        b.started(0);
        b.record(0, Outcome::Answered(Duration::from_millis(90)), t0, &s);
        b.started(1);
        b.record(1, Outcome::Answered(Duration::from_millis(10)), t0, &s);
        b.started(2);
        b.record(2, Outcome::Answered(Duration::from_millis(50)), t0, &s);
        let mut draws = [0.0, 0.0].into_iter();
        assert_eq!(b.order(Strategy::P2c, &[], t0, || draws.next().unwrap_or(0.0)), [1, 2, 0]);
        // Pending requests weigh in: the fast one with 9 in flight loses.
        (0..9).for_each(|_| b.started(1));
        let mut draws = [0.0, 0.0].into_iter();
        assert_eq!(b.order(Strategy::P2c, &[], t0, || draws.next().unwrap_or(0.0)), [0, 2, 1]);
    }

    #[test]
    fn waits_honour_retry_after_up_to_thirty_seconds_and_back_off_with_jitter() {
        let r = Retry { attempts: 4, on: vec![503], backoff: Duration::from_millis(100) };
        assert_eq!(r.wait(1, Some(Duration::from_secs(2)), 0.3), Duration::from_secs(2));
        assert_eq!(r.wait(1, Some(Duration::from_secs(120)), 0.3), MAX_RETRY_AFTER);
        assert_eq!(r.wait(1, None, 1.0), Duration::from_millis(100));
        assert_eq!(r.wait(1, None, 0.0), Duration::from_millis(50));
        assert_eq!(r.wait(3, None, 1.0), Duration::from_millis(400));
    }
}
