#!/usr/bin/env bash
# CI performance guard: a short form of benches/compare.sh. Builds pgw and pgw-load with the
# `bench-ci` profile (release settings at opt-level 1: quick to build, still representative),
# starts the reference Pushgateway and one pgw node on loopback, preloads 1,000 groups of 10
# series into each and pushes 10 series per PUT over 32 connections for a few seconds.
#
# It is a benchmark, not a timed unit test: it fails only on a gross regression, i.e. when
# pgw's throughput is below --min-ratio (default 10) times the reference's in the same run
# (pgw measures 30-200x here, the ratio depending on the machine's load). A failed attempt is
# repeated once before the guard fails, so one noisy moment does not fail CI.
#
#   benches/guard.sh [--min-ratio R] [--duration S]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${PGW_GUARD_PROFILE:-bench-ci}
start=$SECONDS
(cd "$root" && cargo build --profile "$profile" --bin pgw --bin pgw-load)
echo "== guard: built in $((SECONDS - start)) s (profile $profile)"
export PGW_BIN=$root/target/$profile/pgw PGW_LOAD=$root/target/$profile/pgw-load
for attempt in 1 2; do
  if "$root/benches/compare.sh" --guard "$@"; then
    echo "== guard: passed (attempt $attempt) in $((SECONDS - start)) s"
    exit 0
  fi
  echo "== guard: attempt $attempt below the threshold" >&2
done
echo "== guard: FAILED: single-node push throughput stayed below the threshold twice" >&2
exit 1
