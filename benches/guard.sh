#!/usr/bin/env bash
# CI performance guard: a short form of benches/compare.sh. Uses the debug binaries of pgw and
# pgw-load that the test step built (so CI compiles nothing more; set PGW_GUARD_PROFILE=release
# or bench-ci to build and measure an optimised build instead), starts the reference
# Pushgateway and one pgw node on loopback, preloads 1,000 groups of 10 series into each and
# pushes 10 series per PUT over 32 connections for a few seconds.
#
# It is a benchmark, not a timed unit test: it fails only on a gross regression, i.e. when
# pgw's throughput is below --min-ratio (default 10) times the reference's in the same run
# (a debug build measures 30-40x here, a release build 100-150x). A failed attempt is
# repeated once before the guard fails, so one noisy moment does not fail CI.
#
#   benches/guard.sh [--min-ratio R] [--duration S]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${PGW_GUARD_PROFILE:-dev}
start=$SECONDS
(cd "$root" && cargo build --profile "$profile" --bin pgw --bin pgw-load)
echo "== guard: built in $((SECONDS - start)) s (profile $profile)"
dir=$profile
[ "$profile" = dev ] && dir=debug
export PGW_BIN=$root/target/$dir/pgw PGW_LOAD=$root/target/$dir/pgw-load
for attempt in 1 2; do
  if "$root/benches/compare.sh" --guard "$@"; then
    echo "== guard: passed (attempt $attempt) in $((SECONDS - start)) s"
    exit 0
  fi
  echo "== guard: attempt $attempt below the threshold" >&2
done
echo "== guard: FAILED: single-node push throughput stayed below the threshold twice" >&2
exit 1
