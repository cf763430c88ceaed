//! Benchmarks of the hot paths of a push and a scrape: parse, apply, render.
//!
//! Run: `cargo bench -p pgw-benches --bench core`. Figures go to docs/performance.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgw_benches::{put, store, text_body};

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_text");
    for series in [10usize, 1_000, 100_000] {
        let body = text_body("bench_parse", series);
        g.throughput(Throughput::Elements(series as u64));
        g.bench_with_input(BenchmarkId::from_parameter(series), &body, |b, body| {
            b.iter(|| pgw_core::text::parse(body).map(|f| f.len()))
        });
    }
    g.finish();
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_push_10_series");
    let body = text_body("bench_new_family", 10);
    for (name, groups, per_group) in [
        ("empty_store", 0usize, 0usize),
        ("store_100k_series", 100, 1_000),
    ] {
        // A checked PUT of 10 series into one group of its own, applied again and again to
        // the same store: after the first iteration each apply replaces the group's
        // families, so the store keeps its size and the timed part is apply alone (the
        // consistency check, the index updates, the group rewrite).
        let mut s = store(groups, per_group);
        let cmd = put(groups + 1, &body, 1_800_000_000_000_000_000);
        g.bench_function(name, |b| b.iter(|| s.apply(&cmd)));
    }
    g.finish();
}

fn render(c: &mut Criterion) {
    let mut g = c.benchmark_group("render_text");
    g.sample_size(20);
    let s = store(100, 1_000);
    g.throughput(Throughput::Elements(s.series_count() as u64));
    let mut out = Vec::new();
    g.bench_function("100k_series", |b| {
        b.iter(|| {
            out.clear();
            pgw_core::render::text(&s, &[], &mut out);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, parse, apply, render);
criterion_main!(benches);
