#!/usr/bin/env python3
"""Summarises the JSON results of benches/compare.sh (one file per system, run and workload:
`<system>.<run>.<workload>.json`, as written by `pgw-load --json`): medians over the runs,
absolute figures and ratios to the reference. `--one FILE` prints a one-line summary of one
result. In guard mode, exits 1 when single-node small-push throughput is below
`--min-ratio` times the reference's."""

import argparse
import glob
import json
import os
import statistics
import sys

SYSTEMS = [("ref", "reference 1.5.1"), ("single", "pgw 1 node"), ("cluster", "pgw 3 nodes")]

# (workload file, section, metric path, label, unit)
FULL_ROWS = [
    ("push32", "push", "throughput_per_s", "push 10 series, 32 conns, 10k stored: throughput", "push/s"),
    ("push32", "push", "latency_ms.p50", "push 10 series, 32 conns, 10k stored: p50", "ms"),
    ("push32", "push", "latency_ms.p99", "push 10 series, 32 conns, 10k stored: p99", "ms"),
    ("push1", "push", "throughput_per_s", "push 10 series, 1 client, 10k stored: throughput", "push/s"),
    ("push1", "push", "latency_ms.p50", "push 10 series, 1 client, 10k stored: p50", "ms"),
    ("push1", "push", "latency_ms.p99", "push 10 series, 1 client, 10k stored: p99", "ms"),
    ("push32_fresh", "push", "throughput_per_s", "push 10 series, 32 conns, empty store: throughput", "push/s"),
    ("push32_fresh", "push", "latency_ms.p50", "push 10 series, 32 conns, empty store: p50", "ms"),
    ("push32_fresh", "push", "latency_ms.p99", "push 10 series, 32 conns, empty store: p99", "ms"),
    ("preload10k", "push", "elapsed_s", "preload 10k series (1,000 x 10)", "s"),
    ("preload100k", "push", "elapsed_s", "preload 100k series (50 x 2,000)", "s"),
    ("push1_at100k", "push", "latency_ms.p50", "push with 100k stored, 1 client: p50", "ms"),
    ("push1_at100k", "push", "latency_ms.p99", "push with 100k stored, 1 client: p99", "ms"),
    ("scrape100k", "scrape", "latency_ms.p50", "scrape of 100k series: p50", "ms"),
    ("scrape100k", "scrape", "latency_ms.p99", "scrape of 100k series: p99", "ms"),
    ("scrape100k", "scrape", "bytes_per_response", "scrape of 100k series: body", "MB"),
    ("mixed100k", "push", "throughput_per_s", "8 pushers + scrape every 1 s: pushes", "push/s"),
    ("mixed100k", "push", "latency_ms.p99", "8 pushers + scrape every 1 s: push p99", "ms"),
    ("mixed100k", "scrape", "latency_ms.p50", "8 pushers + scrape every 1 s: scrape p50", "ms"),
    ("scrape100k", "rss", "max", "RSS holding 100k series (largest node)", "MB"),
]
GUARD_ROWS = FULL_ROWS[:3]
SCALE_ROWS = [
    ("preload1m", "push", "elapsed_s", "preload 1M series (10k groups x 100)", "s"),
    ("preload1m", "push", "throughput_per_s", "preload 1M series: pushes", "push/s"),
    ("firstscrape", None, "first_scrape_s", "first scrape of 1M series (nothing cached)", "s"),
    ("scrape1m", "scrape", "latency_ms.p50", "scrape of 1M series: p50", "ms"),
    ("scrape1m", "scrape", "latency_ms.max", "scrape of 1M series: max", "ms"),
    ("scrape1m", "scrape", "bytes_per_response", "scrape of 1M series: body", "MB"),
    ("push1_at1m", "push", "latency_ms.p50", "push with 1M stored, 1 client: p50", "ms"),
    ("push1_at1m", "push", "latency_ms.p99", "push with 1M stored, 1 client: p99", "ms"),
    ("mixed1m", "scrape", "latency_ms.p50", "scrape every 1 s while 4 pushers change the 1M family: p50", "ms"),
    ("mixed1m", "scrape", "latency_ms.max", "scrape every 1 s while 4 pushers change the 1M family: max", "ms"),
    ("mixed1m", "push", "throughput_per_s", "... the pushes (100 series each)", "push/s"),
    ("scrape1m", "rss", "max", "RSS holding 1M series (largest node)", "MB"),
    ("scrape1m", "rss", "per_series", "RSS per series (largest node)", "bytes"),
    ("restart", None, "ready_s", "restarted node: ready after", "s"),
    ("restart", None, "caught_up_s", "restarted node: same bytes as node 1 after", "s"),
]


def dig(d, path):
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def metric(doc, section, path, series=None):
    if doc is None:
        return None
    if section == "rss":
        rss = [p.get("rss_bytes") for p in doc.get("rss", []) if p.get("rss_bytes")]
        if not rss:
            return None
        if path == "per_series":
            return max(rss) / series if series else None
        return max(rss) / 1e6
    v = dig(doc[section], path) if section else dig(doc, path)
    if v is None:
        return None
    if path == "bytes_per_response":
        return v / 1e6
    return v


def load(directory):
    docs = {}
    for f in glob.glob(os.path.join(directory, "*.json")):
        parts = os.path.basename(f)[: -len(".json")].split(".")
        if len(parts) != 3:
            continue
        system, run, workload = parts
        with open(f) as fh:
            try:
                docs[(system, run, workload)] = json.load(fh)
            except json.JSONDecodeError:
                continue
    return docs


def errors(doc):
    out = {}
    for section in ("push", "scrape"):
        for k, n in (doc.get(section) or {}).get("errors", {}).items():
            out[f"{section} {k}"] = out.get(f"{section} {k}", 0) + n
    return out


def fmt(v, unit):
    if v is None:
        return "-"
    if unit in ("push/s", "bytes"):
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(docs, rows, series_for_rss):
    runs = sorted({r for (_, r, _) in docs})
    present = [(s, label) for s, label in SYSTEMS if any(k[0] == s for k in docs)]
    header = ["workload", "unit"]
    for s, label in present:
        header.append(label)
        if s != "ref" and any(p[0] == "ref" for p in present):
            header.append("ratio")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    medians = {}
    for wl, section, path, label, unit in rows:
        cells = [label, unit]
        ref_v = None
        for s, _ in present:
            vals = [metric(docs.get((s, r, wl)), section, path, series_for_rss) for r in runs]
            vals = [v for v in vals if v is not None]
            v = statistics.median(vals) if vals else None
            medians[(s, wl, section, path)] = v
            if s == "ref":
                ref_v = v
            cells.append(fmt(v, unit) + (f" (n={len(vals)})" if len(vals) not in (0, len(runs)) else ""))
            if s != "ref" and any(p[0] == "ref" for p in present):
                cells.append(f"{v / ref_v:.3g}x" if v is not None and ref_v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    extra = []
    for s, label in present:
        rep = [docs.get((s, r, "replicas")) for r in runs]
        rep = [x for x in rep if x]
        if rep:
            same = sum(1 for x in rep if x.get("identical"))
            extra.append(f"{label}: telemetry body byte-identical on all replicas in {same} of {len(rep)} runs")
        errs = {}
        for (sys_, _, _), doc in docs.items():
            if sys_ == s:
                for k, n in errors(doc).items():
                    errs[k] = errs.get(k, 0) + n
        extra.append(f"{label}: errors over all runs: " + (", ".join(f"{k}: {n}" for k, n in sorted(errs.items())) or "none"))
    return "\n".join(lines), extra, medians


def one(path):
    with open(path) as fh:
        doc = json.load(fh)
    out = []
    for section in ("push", "scrape"):
        r = doc.get(section)
        if not r:
            continue
        l = r["latency_ms"]
        out.append(
            f"{section}: {r['ok']} ok {r['throughput_per_s']:.1f}/s p50 {l['p50']:.2f} ms "
            f"p99 {l['p99']:.2f} ms max {l['max']:.1f} ms"
            + (f" body {r['bytes_per_response'] / 1e6:.2f} MB" if section == "scrape" else "")
            + (f" errors {r['errors']}" if r["errors"] else "")
        )
    rss = [p.get("rss_bytes", 0) for p in doc.get("rss", [])]
    if rss:
        out.append("rss " + "/".join(f"{b / 1e6:.0f}" for b in rss) + " MB")
    print("; ".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one")
    ap.add_argument("--dir")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--min-ratio", type=float, default=10.0)
    a = ap.parse_args()
    if a.one:
        one(a.one)
        return 0
    docs = load(a.dir)
    rows = {"guard": GUARD_ROWS, "scale": SCALE_ROWS}.get(a.mode, FULL_ROWS)
    series = 1_000_000 if a.mode == "scale" else 100_000
    tab, extra, med = table(docs, rows, series)
    runs = len({r for (_, r, _) in docs})
    print(f"\nMedians of {runs} run(s); ratio = pgw / reference (throughput: higher is better; times, sizes: lower is better).\n")
    print(tab)
    print()
    for e in extra:
        print("- " + e)
    if a.mode == "guard":
        ref = med.get(("ref", "push32", "push", "throughput_per_s"))
        pgw = med.get(("single", "push32", "push", "throughput_per_s"))
        if not ref or not pgw:
            print("guard: missing results", file=sys.stderr)
            return 1
        ratio = pgw / ref
        verdict = "ok" if ratio >= a.min_ratio else "REGRESSION"
        print(f"\nguard: single-node small-push throughput {pgw:,.0f}/s = {ratio:.1f}x the reference's {ref:,.0f}/s (threshold {a.min_ratio:g}x): {verdict}")
        return 0 if ratio >= a.min_ratio else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
