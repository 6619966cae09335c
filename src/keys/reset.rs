//! When a rate-limited key may be used again (SPEC §12), from a 429's
//! headers: `retry-after` (seconds or an HTTP date), else the latest of
//! OpenAI's `x-ratelimit-reset-*` durations (`6m0s`, `1.5s`, `20ms`) and
//! Anthropic's `anthropic-ratelimit-*-reset` times (RFC 3339), else 60 s.
//! Pure: the caller passes the wall clock.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::usage::time::days_from_civil;

/// Cooling when a 429 says nothing about its end.
pub const DEFAULT_COOLING: Duration = Duration::from_secs(60);
/// The longest cooling a header can ask for (a typo must not bench a key
/// for a year).
pub const MAX_COOLING: Duration = Duration::from_secs(24 * 3600);

const OPENAI_RESETS: &[&str] = &["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"];
const ANTHROPIC_RESETS: &[&str] = &[
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
];

/// How long a key that got this 429 cools, from `now`.
pub fn cooling(headers: &HeaderMap, now: SystemTime) -> Duration {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = text("retry-after")
        && let Some(d) = retry_after(v, now)
    {
        return d.min(MAX_COOLING);
    }
    let durations = OPENAI_RESETS.iter().filter_map(|n| text(n)).filter_map(go_duration);
    let times = ANTHROPIC_RESETS
        .iter()
        .filter_map(|n| text(n))
        .filter_map(|v| humantime::parse_rfc3339_weak(v).ok())
        .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO));
    durations.chain(times).max().map_or(DEFAULT_COOLING, |d| d.min(MAX_COOLING))
}

/// An answer's `retry-after`, if it has a usable one.
pub fn retry_after_of(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    retry_after(headers.get("retry-after")?.to_str().ok()?.trim(), now)
}

/// `retry-after`: delay-seconds or an IMF-fixdate (RFC 9110 §10.2.3).
fn retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(v: &str) -> Option<SystemTime> {
    let (_, rest) = v.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

/// A Go-style duration as OpenAI sends it: `1h2m3.5s`, `6m0s`, `20ms`.
fn go_duration(v: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = v;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        let n: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// 2026-12-01T12:00:00Z.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_126_400)
    }

    #[test]
    fn each_form_of_reset() {
        let secs = |h: &[(&'static str, &str)]| cooling(&headers(h), now()).as_secs_f64();
        assert_eq!(secs(&[("retry-after", "7")]), 7.0);
        assert_eq!(secs(&[("retry-after", "Tue, 01 Dec 2026 12:00:30 GMT")]), 30.0);
        assert_eq!(secs(&[("retry-after", "Tue, 01 Dec 2026 11:00:00 GMT")]), 0.0, "a date in the past");
        // The latest reset counts; retry-after wins over them.
        assert_eq!(secs(&[("x-ratelimit-reset-requests", "6m0s"), ("x-ratelimit-reset-tokens", "1.5s")]), 360.0);
        assert_eq!(secs(&[("x-ratelimit-reset-tokens", "20ms")]), 0.02);
        assert_eq!(secs(&[("x-ratelimit-reset-tokens", "1h2m3s")]), 3723.0);
        assert_eq!(secs(&[("retry-after", "2"), ("x-ratelimit-reset-requests", "6m0s")]), 2.0);
        assert_eq!(
            secs(&[
                ("anthropic-ratelimit-requests-reset", "2026-12-01T12:00:10Z"),
                ("anthropic-ratelimit-output-tokens-reset", "2026-12-01T12:01:00Z"),
            ]),
            60.0
        );
        assert_eq!(secs(&[("anthropic-ratelimit-tokens-reset", "2026-12-01T12:00:05.5Z")]), 5.5);
    }

    #[test]
    fn nothing_usable_is_sixty_seconds_and_nothing_is_over_a_day() {
        let c = |h: &[(&'static str, &str)]| cooling(&headers(h), now());
        assert_eq!(c(&[]), DEFAULT_COOLING);
        for bad in ["soon", "-1", "1e3", "Tue, 32 Dec 2026 12:00:00 GMT", "Tue, 01 Dec 2026 12:00:00 UTC", ""] {
            assert_eq!(c(&[("retry-after", bad)]), DEFAULT_COOLING, "{bad:?}");
        }
        for bad in ["6x", "m", "1.2.3s", ""] {
            assert_eq!(c(&[("x-ratelimit-reset-requests", bad)]), DEFAULT_COOLING, "{bad:?}");
        }
        assert_eq!(c(&[("anthropic-ratelimit-requests-reset", "tomorrow")]), DEFAULT_COOLING);
        assert_eq!(c(&[("retry-after", "99999999999")]), MAX_COOLING);
    }
}
