//! Workload builders shared by pgw's benchmarks: deterministic text bodies and stores of a
//! given size.

use pgw_core::command::Push;
use pgw_core::{Command, GroupStore, GroupingKey};

/// A text-format body with `series` gauge series in one family, labels `i` and `k`.
pub fn text_body(family: &str, series: usize) -> Vec<u8> {
    let mut out = String::with_capacity(series * 48);
    out.push_str(&format!(
        "# HELP {family} A benchmark gauge.\n# TYPE {family} gauge\n"
    ));
    for i in 0..series {
        out.push_str(&format!("{family}{{i=\"{i}\",k=\"v{}\"}} {}.5\n", i % 7, i));
    }
    out.into_bytes()
}

/// A grouping key `{job="job<g>", instance="i<g>"}`.
pub fn key(g: usize) -> GroupingKey {
    GroupingKey::from_pairs([("job", format!("job{g}")), ("instance", format!("i{g}"))])
}

/// A checked PUT of `body` (text format) to group `g`.
pub fn put(g: usize, body: &[u8], time_ns: i64) -> Command {
    let families = pgw_core::text::parse(body).unwrap_or_default();
    Command::Push(Push::new(key(g), true, time_ns, true, &families))
}

/// A store with `groups` groups of `series_per_group` series each (one family per group
/// plus a family shared by every group).
pub fn store(groups: usize, series_per_group: usize) -> GroupStore {
    let mut s = GroupStore::new();
    for g in 0..groups {
        let mut body = text_body(
            &format!("bench_family_{}", g % 10),
            series_per_group.saturating_sub(1),
        );
        body.extend_from_slice(format!("bench_shared{{g=\"{g}\"}} 1\n").as_bytes());
        s.apply(&put(g, &body, 1_700_000_000_000_000_000 + g as i64));
    }
    s
}
