//! Resident memory of a [`pgw_core::GroupStore`] holding N series, and of its render cache:
//! `cargo run --release -p pgw-benches --example store_memory -- 100000`.

use pgw_benches::{put, text_body};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let series: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let per_group = 100usize;
    let groups = series.div_ceil(per_group);
    let before = rss_bytes();
    let mut s = pgw_core::GroupStore::new();
    let body = text_body("bench_gauge", per_group);
    for g in 0..groups {
        s.apply(&put(g, &body, 1_700_000_000_000_000_000 + g as i64));
    }
    let stored = rss_bytes();
    let mut out = Vec::new();
    pgw_core::render::text(&s, &[], &mut out);
    drop(out);
    let rendered = rss_bytes();
    let n = s.series_count() as f64;
    println!(
        "{} series in {groups} groups: store {:.0} B/series, render cache {:.0} B/series",
        s.series_count(),
        (stored - before) as f64 / n,
        rendered.saturating_sub(stored) as f64 / n
    );
}
