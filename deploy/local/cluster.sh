#!/usr/bin/env bash
# Runs a 3-node pgw cluster on loopback, for trying clustering out.
#
#   deploy/local/cluster.sh start    # build (release) if needed, start 3 nodes, print endpoints
#   deploy/local/cluster.sh status   # readiness and Raft role of each node
#   deploy/local/cluster.sh stop     # SIGTERM each node (by its recorded PID) and wait
#
# Environment: PGW_LOCAL_DIR (default ./.pgw-local) holds data, logs and PID files;
# PGW_HTTP_BASE (default 9191) and PGW_GRPC_BASE (default 9291) are the first ports;
# PGW_BIN overrides the binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${PGW_LOCAL_DIR:-$root/.pgw-local}
http_base=${PGW_HTTP_BASE:-9191}
grpc_base=${PGW_GRPC_BASE:-9291}
nodes=(1 2 3)

http_port() { echo $((http_base + $1 - 1)); }
grpc_port() { echo $((grpc_base + $1 - 1)); }

binary() {
  if [ -n "${PGW_BIN:-}" ]; then echo "$PGW_BIN"; return; fi
  if [ ! -x "$root/target/release/pgw" ]; then
    (cd "$root" && cargo build --release --bin pgw >&2)
  fi
  echo "$root/target/release/pgw"
}

peers() {
  local out=() i
  for i in "${nodes[@]}"; do out+=("$i=127.0.0.1:$(grpc_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}

running() { [ -f "$dir/n$1.pid" ] && kill -0 "$(cat "$dir/n$1.pid")" 2>/dev/null; }

start() {
  local bin i
  bin=$(binary)
  mkdir -p "$dir"
  for i in "${nodes[@]}"; do
    if running "$i"; then echo "node $i already running (pid $(cat "$dir/n$i.pid"))"; continue; fi
    "$bin" \
      --web.listen-address "127.0.0.1:$(http_port "$i")" \
      --storage.path "$dir/n$i" \
      --cluster.node-id "$i" \
      --cluster.peers "$(peers)" \
      --cluster.listen-address "127.0.0.1:$(grpc_port "$i")" \
      --web.enable-admin-api \
      >"$dir/n$i.log" 2>&1 &
    echo $! >"$dir/n$i.pid"
  done
  for i in "${nodes[@]}"; do
    local deadline=$((SECONDS + 30))
    until curl -fsS "http://127.0.0.1:$(http_port "$i")/-/ready" >/dev/null 2>&1; do
      if [ $SECONDS -ge $deadline ]; then echo "node $i not ready after 30 s; see $dir/n$i.log" >&2; exit 1; fi
      if ! running "$i"; then echo "node $i exited; see $dir/n$i.log" >&2; exit 1; fi
      sleep 0.2
    done
  done
  echo "3-node pgw cluster on loopback (data, logs, PIDs in $dir):"
  for i in "${nodes[@]}"; do
    echo "  node $i: http://127.0.0.1:$(http_port "$i")  grpc 127.0.0.1:$(grpc_port "$i")  pid $(cat "$dir/n$i.pid")"
  done
  echo "Push to any node, scrape any node:"
  echo "  echo 'demo 1' | curl --data-binary @- http://127.0.0.1:$(http_port 2)/metrics/job/demo"
  echo "  curl -s http://127.0.0.1:$(http_port 3)/metrics | grep demo"
}

status() {
  local i
  for i in "${nodes[@]}"; do
    if running "$i"; then
      printf 'node %s (pid %s): ' "$i" "$(cat "$dir/n$i.pid")"
      curl -s "http://127.0.0.1:$(http_port "$i")/api/v1/cluster" || printf 'no answer'
      echo
    else
      echo "node $i: not running"
    fi
  done
}

stop() {
  local i pid
  for i in "${nodes[@]}"; do
    if running "$i"; then
      pid=$(cat "$dir/n$i.pid")
      kill -TERM "$pid"
      local deadline=$((SECONDS + 20))
      while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then echo "node $i (pid $pid) did not stop; sending SIGKILL" >&2; kill -KILL "$pid"; fi
        sleep 0.1
      done
      echo "node $i stopped"
    fi
    rm -f "$dir/n$i.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
