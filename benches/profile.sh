#!/usr/bin/env bash
# Profiles one pgw node (release build) under the small-push workload with perf: preloads
# 1,000 groups of 10 series, then records `perf record --call-graph dwarf` while pgw-load
# pushes 10 series per PUT over 32 connections. Writes perf.data, the folded stacks and, when
# `inferno-flamegraph` is on PATH (`cargo install inferno`), a flame graph, to the output
# directory, and prints the share of each pipeline stage.
#
#   benches/profile.sh [OUT_DIR] [SECONDS]      # default /tmp/pgw-profile, 5 s
#   WORKLOAD="scrape --scrape-connections 1" benches/profile.sh   # another pgw-load workload
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/pgw-profile}
secs=${2:-5}
workload=${WORKLOAD:-push -c 32 --series 10 --groups 1000 --job small}
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
(cd "$root" && cargo build --release --bin pgw --bin pgw-load >&2)
mkdir -p "$out"
data=$(mktemp -d "${TMPDIR:-/tmp}/pgw-profile.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$root/target/release/pgw" --web.listen-address "127.0.0.1:$port" --storage.path "$data/d" \
  --log.level warn >"$data/log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
url=http://127.0.0.1:$port
for _ in $(seq 1 100); do curl -fs "$url/-/ready" >/dev/null && break; sleep 0.1; done
"$root/target/release/pgw-load" preload --url "$url" -c 8 --groups 1000 --series 10 --job small >/dev/null
perf record -F 999 --call-graph dwarf,16384 -p "$pid" -o "$out/perf.data" -- sleep "$secs" >/dev/null 2>&1 &
rec=$!
# shellcheck disable=SC2086
"$root/target/release/pgw-load" $workload --url "$url" -d "$((secs + 1))"
wait $rec || true
perf script -i "$out/perf.data" 2>/dev/null | python3 "$root/benches/perf_fold.py" >"$out/folded.txt"
if command -v inferno-flamegraph >/dev/null; then
  inferno-flamegraph <"$out/folded.txt" >"$out/flamegraph.svg"
  echo "flame graph: $out/flamegraph.svg"
fi
python3 "$root/benches/perf_fold.py" --top "$out/folded.txt" "${FRAME:-}"
