//! Calendar figures of §11, in UTC: the month (`YYYY-MM`) and day
//! (`YYYY-MM-DD`) a request falls in, RFC 3339 times, and when a month
//! ends. Civil dates from Unix time by the days-from-civil algorithm.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `(year, month, day)` of a count of days since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM` of a Unix time in milliseconds.
pub fn month_of(ms: i64) -> String {
    let (y, m, _) = civil(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}")
}

/// `YYYY-MM-DD` of a Unix time in milliseconds.
pub fn day_of(ms: i64) -> String {
    let (y, m, d) = civil(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 UTC with seconds: `2026-12-01T12:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (h, mi, s) = (secs.rem_euclid(86_400) / 3600, secs.rem_euclid(3600) / 60, secs.rem_euclid(60));
    format!("{}T{h:02}:{mi:02}:{s:02}Z", day_of(ms))
}

/// The Unix time (ms) at which the month holding `ms` ends.
pub fn month_end(ms: i64) -> i64 {
    let (y, m, _) = civil(ms.div_euclid(86_400_000));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) * 86_400_000
}

/// The month and day of recent times, computed once per day (the ledger
/// and the store ask for them on every request).
#[derive(Debug, Default)]
pub struct Calendar {
    day_number: Option<i64>,
    month: String,
    day: String,
}

impl Calendar {
    /// `(YYYY-MM, YYYY-MM-DD)` of `ms`.
    pub fn at(&mut self, ms: i64) -> (&str, &str) {
        let n = ms.div_euclid(86_400_000);
        if self.day_number != Some(n) {
            self.day_number = Some(n);
            self.month = month_of(ms);
            self.day = day_of(ms);
        }
        (&self.month, &self.day)
    }
}

/// A `month=` query value: `YYYY-MM` with a real month.
pub fn is_month(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit)
        && matches!(s[5..].parse::<u32>(), Ok(1..=12))
}

/// Seconds to wait until `until_ms`, at least 1 (a `retry-after`).
pub fn seconds_until(until_ms: i64, now_ms: i64) -> u64 {
    Duration::from_millis(until_ms.saturating_sub(now_ms).max(0) as u64).as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        // 2026-12-01T12:34:56Z
        let t = 1_796_128_496_000;
        assert_eq!(rfc3339(t), "2026-12-01T12:34:56Z");
        assert_eq!(month_of(t), "2026-12");
        assert_eq!(day_of(t), "2026-12-01");
        assert_eq!(rfc3339(month_end(t)), "2027-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // A leap day and the month after it.
        let leap = days_from_civil(2028, 2, 29) * 86_400_000;
        assert_eq!(day_of(leap), "2028-02-29");
        assert_eq!(rfc3339(month_end(leap)), "2028-03-01T00:00:00Z");
        for d in [-1000, 0, 1, 59, 60, 365, 10_957, 20_000, 100_000] {
            let (y, m, dd) = civil(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert!(is_month("2026-12") && !is_month("2026-13") && !is_month("2026-1") && !is_month("abcd-12"));
        assert_eq!(seconds_until(2500, 1000), 2);
        assert_eq!(seconds_until(0, 1000), 1);
        let mut cal = Calendar::default();
        assert_eq!(cal.at(t), ("2026-12", "2026-12-01"));
        assert_eq!(cal.at(month_end(t) - 1), ("2026-12", "2026-12-31"));
        assert_eq!(cal.at(month_end(t)), ("2027-01", "2027-01-01"));
    }
}
