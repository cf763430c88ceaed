//! UTC time formatting without a date library: Go's RFC 3339 forms for the API and logs,
//! and a human-readable form for the web page.

use std::time::{SystemTime, UNIX_EPOCH};

use pgw_core::civil::civil_from_days;

/// Broken-down UTC time of `ns` nanoseconds since the Unix epoch.
struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
}

fn utc(ns: i128) -> Utc {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Utc {
        year,
        month,
        day,
        hour: rem / 3600,
        min: rem % 3600 / 60,
        sec: rem % 60,
        nanos,
    }
}

/// Nanoseconds since the Unix epoch of a `SystemTime` (negative before it).
pub fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Go's `time.RFC3339Nano` in UTC: `2026-11-21T15:13:41.38601046Z` (trailing zeros of
/// the fraction dropped, no fraction when zero).
pub fn rfc3339_nano(ns: i128) -> String {
    let t = utc(ns);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.min, t.sec
    );
    if t.nanos != 0 {
        let frac = format!("{:09}", t.nanos);
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// RFC 3339 with milliseconds in UTC, for log lines: `2026-11-21T15:13:41.386Z`.
pub fn rfc3339_millis(ns: i128) -> String {
    let t = utc(ns);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.min,
        t.sec,
        t.nanos / 1_000_000
    )
}

/// Human-readable UTC for the web page: `2026-11-21 15:13:41.386 UTC`.
pub fn human(ns: i128) -> String {
    let t = utc(ns);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} UTC",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.min,
        t.sec,
        t.nanos / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
        let ns = 1_795_274_102_585_044_600i128;
        assert_eq!(rfc3339_nano(ns), "2026-11-21T15:15:02.5850446Z");
        assert_eq!(rfc3339_millis(ns), "2026-11-21T15:15:02.585Z");
        assert_eq!(human(ns), "2026-11-21 15:15:02.585 UTC");
        assert_eq!(
            rfc3339_nano(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(rfc3339_nano(-1_000_000_000), "1969-12-31T23:59:59Z");
    }
}
