//! Benchmarks of the hot paths of a push and a scrape: parse, apply, render.
//!
//! Run: `cargo bench -p pgw-benches --bench core`. Figures go to docs/performance.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgw_benches::{key, load_push, load_store, put, store, text_body, wide_push};
use pgw_core::Command;
use pgw_core::command::Push;

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
    let base = store(100, 1_000);
    g.throughput(Throughput::Elements(base.series_count() as u64));
    let mut out = Vec::new();
    // Nothing rendered yet: every family is rendered and sorted (each iteration renders a
    // copy of a store that was never rendered; the copy is made in setup).
    g.bench_function("100k_series_uncached", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |s| {
                out.clear();
                pgw_core::render::text(s, &[], &mut out);
                out.len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // Nothing changed since the last scrape: the body is copied from the render cache.
    let mut s = base.clone();
    g.bench_function("100k_series_cached", |b| {
        b.iter(|| {
            out.clear();
            pgw_core::render::text(&s, &[], &mut out);
            out.len()
        })
    });
    // One push between two scrapes: the pushed group's family (shared by 10 groups, ~10k
    // series) and `push_time_seconds` are rendered again, the rest is copied.
    let body = text_body("bench_family_3", 999);
    let cmd = put(3, &body, 1_800_000_000_000_000_000);
    g.bench_function("100k_series_after_one_push", |b| {
        b.iter(|| {
            s.apply(&cmd);
            out.clear();
            pgw_core::render::text(&s, &[], &mut out);
            out.len()
        })
    });

    // One family shared by 1,000 groups of 100 series (as `pgw-load preload`): after a push
    // to one group, that group's run is rendered again and the others' are copied.
    let mut s = load_store(1_000, 100);
    let cmd = load_push(500, 100, 1_800_000_000_000_000_000);
    g.bench_function("100k_series_1k_groups_after_one_push", |b| {
        b.iter(|| {
            s.apply(&cmd);
            out.clear();
            pgw_core::render::text(&s, &[], &mut out);
            out.len()
        })
    });
    let base_groups = load_store(1_000, 100);
    g.bench_function("100k_series_1k_groups_uncached", |b| {
        b.iter_batched_ref(
            || base_groups.clone(),
            |s| {
                out.clear();
                pgw_core::render::text(s, &[], &mut out);
                out.len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("render_protobuf");
    g.sample_size(20);
    g.throughput(Throughput::Elements(base.series_count() as u64));
    g.bench_function("100k_series_uncached", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |s| {
                out.clear();
                pgw_core::render::protobuf(s, &[], &mut out);
                out.len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let s = base.clone();
    g.bench_function("100k_series_cached", |b| {
        b.iter(|| {
            out.clear();
            pgw_core::render::protobuf(&s, &[], &mut out);
            out.len()
        })
    });
    g.finish();
}

/// The push path outside Raft: the receiving node parses the body and builds the command
/// that goes into the log; every replica applies a batch of them.
fn push_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("push_path");
    let body = text_body("bench_push", 10);
    g.bench_function("parse_and_encode_command_10_series", |b| {
        b.iter(|| {
            let families = pgw_core::text::parse(&body).expect("benchmark body parses");
            let cmd = Command::Push(Push::new(
                key(7),
                true,
                1_800_000_000_000_000_000,
                true,
                &families,
            ));
            cmd.encode().len()
        })
    });
    // A group commit of 32 small pushes (one per connection of the 32-connection
    // workload), each to its own group, into a store holding 100k series.
    let mut s = store(100, 1_000);
    let batch = Command::Batch(
        (0..32)
            .filter_map(|i| {
                put(1_000 + i, &body, 1_800_000_000_000_000_000)
                    .into_item()
                    .ok()
            })
            .collect(),
    );
    g.throughput(Throughput::Elements(32));
    g.bench_function("apply_batch_32x10_series_store_100k", |b| {
        b.iter(|| s.apply(&batch))
    });
    g.finish();
}

/// A push whose grouping key is as wide as its body is long (issue 10): 2,000 grouping labels
/// × 4,000 series, and 500 × 4,000 to show how the cost grows with the labels. Applied again
/// and again to the same group of an empty store (a PUT replaces it), so the timed part is
/// apply: sanitising (every series gets every grouping label), validation, the index.
/// Linear: 4× the labels costs about 4× the time (it was quadratic, 21 s for 2,000 × 4,000).
fn wide_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_wide_grouping_key");
    g.sample_size(10);
    for (labels, series) in [(500usize, 4_000usize), (2_000, 4_000)] {
        let cmd = wide_push(labels, series, 1_800_000_000_000_000_000);
        let mut s = pgw_core::GroupStore::new();
        g.throughput(Throughput::Elements((labels * series) as u64));
        g.bench_function(format!("{labels}_labels_x_{series}_series"), |b| {
            b.iter(|| s.apply(&cmd))
        });
    }
    g.finish();
}

criterion_group!(benches, parse, apply, render, push_path, wide_key);
criterion_main!(benches);
