//! Output helpers: aligned tables, JSON, RFC 3339 times, byte sizes, progress lines.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable tables and sentences.
    Table,
    /// One JSON document on stdout (see docs/operations.md for the shapes).
    Json,
}

/// Renders rows as a table with a header, columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("pgwctl: cannot encode the result as JSON: {e}"),
    }
}

/// `secs` (Unix time, fractional) as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(secs: f64) -> String {
    let total_ms = (secs * 1000.0).round() as i64;
    let (days, ms_of_day) = (
        total_ms.div_euclid(86_400_000),
        total_ms.rem_euclid(86_400_000),
    );
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        ms_of_day % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm). The same as `pgw_core::civil`, copied because pgwctl does
/// not link the data model (its dependency tree stays small).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `n` bytes in a human unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A progress line on stderr, redrawn at most every 200 ms, shown only when stderr is a
/// terminal and the work is large enough to be worth it.
pub struct Progress {
    what: &'static str,
    total: u64,
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    /// Progress for `total` bytes of `what`; silent unless `wanted`, stderr is a terminal and
    /// `total` is at least 4 MiB.
    pub fn new(what: &'static str, total: u64, wanted: bool) -> Self {
        Progress {
            what,
            total,
            enabled: wanted && total >= 4 << 20 && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Reports `done` bytes.
    pub fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(200))
            && done < self.total
        {
            return;
        }
        self.last = Some(now);
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{}: {} of {} ({pct}%)   ",
            self.what,
            bytes(done),
            bytes(self.total)
        );
        let _ = err.flush();
    }

    /// Ends the progress line.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            eprintln!();
        }
        self.enabled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000.25), "2023-11-14T22:13:20.250Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["100".into(), "bb".into()],
            ],
        );
        assert_eq!(t, "ID   NAME\n1    a\n100  bb\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(5), "5 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
