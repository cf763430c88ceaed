#!/usr/bin/env bash
# Push throughput and latency of a 3-node pgw cluster through HAProxy (deploy/haproxy/
# haproxy.cfg, Debian's haproxy) versus pushing to the nodes directly, with pgw-load, on
# loopback.
#
#   benches/balancer.sh                    # 10 s per workload, 32 connections
#   benches/balancer.sh --duration 5 --connections 8
# Environment: PGW_BIN, PGW_LOAD (binaries; built with `cargo build --release` when unset),
# CARGO_PROFILE (release).
#
# Only processes this script started are stopped (by PID, in an EXIT trap); data lives in a
# temporary directory that is removed at exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
duration=10
connections=32
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift ;;
    --connections) connections=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v haproxy >/dev/null || { echo "haproxy not found: apt-get install haproxy" >&2; exit 1; }
profile=${CARGO_PROFILE:-release}
if [ -z "${PGW_BIN:-}" ] || [ -z "${PGW_LOAD:-}" ]; then
  (cd "$root" && cargo build --profile "$profile" --bin pgw --bin pgw-load >&2)
fi
pgw_bin=${PGW_BIN:-$root/target/$profile/pgw}
load_bin=${PGW_LOAD:-$root/target/$profile/pgw-load}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

http=() grpc=()
for i in 1 2 3; do http+=("$(free_port)"); grpc+=("$(free_port)"); done
peers="1=127.0.0.1:${grpc[0]},2=127.0.0.1:${grpc[1]},3=127.0.0.1:${grpc[2]}"
for i in 0 1 2; do
  "$pgw_bin" --web.listen-address="127.0.0.1:${http[$i]}" --storage.path="$work/n$i" \
    --cluster.node-id=$((i + 1)) --cluster.peers="$peers" \
    --cluster.listen-address="127.0.0.1:${grpc[$i]}" >"$work/n$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:${http[$i]}/-/ready" >/dev/null && break
    sleep 0.1
  done
done
lb=$(free_port)
sed -e "s/bind :9091/bind 127.0.0.1:$lb/" \
    -e "s/10.0.0.1:9091/127.0.0.1:${http[0]}/" \
    -e "s/10.0.0.2:9091/127.0.0.1:${http[1]}/" \
    -e "s/10.0.0.3:9091/127.0.0.1:${http[2]}/" \
    "$root/deploy/haproxy/haproxy.cfg" >"$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$lb/-/ready" >/dev/null && break; sleep 0.1; done

direct="http://127.0.0.1:${http[0]},http://127.0.0.1:${http[1]},http://127.0.0.1:${http[2]}"
echo "== direct to the nodes ($connections connections spread over 3 nodes, ${duration}s)"
"$load_bin" --url "$direct" -c "$connections" -d "$duration" --warmup 2 push
echo "== through HAProxy ($connections connections, ${duration}s)"
"$load_bin" --url "http://127.0.0.1:$lb" -c "$connections" -d "$duration" --warmup 2 push
echo "== one client: direct to a follower-or-leader node, then through HAProxy"
"$load_bin" --url "http://127.0.0.1:${http[0]}" -c 1 -d "$duration" --warmup 1 push
"$load_bin" --url "http://127.0.0.1:$lb" -c 1 -d "$duration" --warmup 1 push
