#!/usr/bin/env python3
"""Folds `perf script` output into stack lines (`root;...;leaf count`, as inferno's and
Brendan Gregg's stackcollapse-perf do), and with `--top FILE` prints where the samples of a
folded file go: by pipeline stage of pgw and by function under a given frame.

  perf script -i perf.data | benches/perf_fold.py > folded.txt
  benches/perf_fold.py --top folded.txt [FRAME_SUBSTRING]
"""
import collections
import re
import sys

STAGES = [
    ("state machine (apply + sled write)", "sm::worker"),
    ("HTTP (hyper/axum, parse, build command)", "axum::serve::handle_connection"),
    ("sled I/O threads", "sled::threadpool"),
    ("Raft core (log append)", "RaftCore"),
    ("write batching", "pgw_server::http::batch"),
    ("replication / gRPC", "tonic"),
]


def top(path, frame=None):
    tot = 0
    stages = collections.Counter()
    under = collections.Counter()
    for line in open(path):
        k, n = line.rsplit(" ", 1)
        n = int(n)
        tot += n
        for name, sub in STAGES:
            if sub in k:
                stages[name] += n
                break
        else:
            stages["other"] += n
        if frame:
            fr = k.split(";")
            idx = next((i for i, f in enumerate(fr) if frame in f), None)
            if idx is not None:
                under[fr[idx + 1] if idx + 1 < len(fr) else "<self>"] += n
    print(f"{tot} samples")
    for k, v in stages.most_common():
        print(f"  {100 * v / tot:5.1f}%  {k}")
    if frame:
        print(f"under {frame}:")
        for k, v in under.most_common(20):
            print(f"  {100 * v / tot:5.1f}%  {k[:160]}")


if len(sys.argv) > 2 and sys.argv[1] == "--top":
    top(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    sys.exit(0)

stacks = {}
cur = []
def flush():
    if cur:
        k = ";".join(reversed(cur))
        stacks[k] = stacks.get(k, 0) + 1
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip():
        flush(); cur = []; continue
    if line.startswith((" ", "\t")):
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            sym = parts[1]
            sym = re.sub(r"\+0x[0-9a-f]+", "", sym)
            sym = re.sub(r" \(.*\)$", "", sym)
            cur.append(sym)
    else:
        flush(); cur = []
flush()
for k, v in stacks.items():
    print(k, v)
