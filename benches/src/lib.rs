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
    let families = pgw_core::text::parse(body).expect("benchmark body parses");
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

/// A store shaped like `pgw-load preload`: `groups` groups `{job="load", instance="g<i>"}`,
/// each with `series` gauges `pgw_load_gauge{series="<j>"}` of one shared family. The
/// grouping labels sort before `series`, so the groups' samples do not interleave.
pub fn load_store(groups: usize, series: usize) -> GroupStore {
    let mut s = GroupStore::new();
    for g in 0..groups {
        s.apply(&load_push(g, series, 1_700_000_000_000_000_000 + g as i64));
    }
    s
}

/// The push `pgw-load` sends to group `g`: `series` gauges of `pgw_load_gauge`.
pub fn load_push(g: usize, series: usize, time_ns: i64) -> Command {
    let mut body = String::from("# TYPE pgw_load_gauge gauge\n");
    for j in 0..series {
        body.push_str(&format!("pgw_load_gauge{{series=\"{j}\"}} {}.25\n", j + g));
    }
    let families = pgw_core::text::parse(body.as_bytes()).expect("benchmark body parses");
    let key = GroupingKey::from_pairs([("job", "load".to_string()), ("instance", format!("g{g}"))]);
    Command::Push(Push::new(key, true, time_ns, true, &families))
}

/// The push of issue 10's "wide key" case: a checked PUT to a group with `labels` grouping
/// labels (`job` plus `l0000`…, values `v0000`…, as a URL
/// `/metrics/job/wide/l0000/v0000/...` gives them) of `series` gauges
/// `wide{s="<i>"}` (one family). Every stored series carries every grouping label, so apply
/// stores `labels × series` label pairs.
pub fn wide_push(labels: usize, series: usize, time_ns: i64) -> Command {
    let mut pairs: Vec<(String, String)> = (0..labels.saturating_sub(1))
        .map(|i| (format!("l{i:04}"), format!("v{i:04}")))
        .collect();
    pairs.push(("job".into(), "wide".into()));
    let mut body = String::from("# TYPE wide gauge\n");
    for i in 0..series {
        body.push_str(&format!("wide{{s=\"{i}\"}} 1\n"));
    }
    let families = pgw_core::text::parse(body.as_bytes()).expect("benchmark body parses");
    Command::Push(Push::new(
        GroupingKey::from_pairs(pairs),
        true,
        time_ns,
        true,
        &families,
    ))
}
