#!/usr/bin/env bash
# Runs a 3-node pgw cluster on loopback, for trying clustering out.
#
#   deploy/local/cluster.sh start    # build (release) if needed, start 3 nodes, print endpoints
#   deploy/local/cluster.sh start --tls  # the same with mutual TLS on the cluster port: makes a
#                                    # CA, node1..3 and admin certificates (openssl) in $dir/tls
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

# Makes the test PKI of --tls once: a CA, peer certificates node1..3, an admin certificate.
make_tls() {
  local t=$dir/tls n
  [ -f "$t/admin.crt" ] && return
  mkdir -p "$t"
  ( cd "$t"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
      -out ca.crt -days 30 -subj "/CN=pgw local CA" 2>/dev/null
    issue() { # name extended-key-usage
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
        -out "$1.csr" -subj "/CN=$1" 2>/dev/null
      printf 'subjectAltName=DNS:%s\nextendedKeyUsage=%s\n' "$1" "$2" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    for n in "${nodes[@]}"; do issue "node$n" serverAuth,clientAuth; done
    issue admin clientAuth
    chmod 600 ./*.key )
}

tls_flags() { # node id
  local t=$dir/tls
  echo "--cluster.tls.cert-file $t/node$1.crt --cluster.tls.key-file $t/node$1.key" \
    "--cluster.tls.ca-file $t/ca.crt --cluster.tls.peer-names node1,node2,node3" \
    "--cluster.tls.admin-names admin"
}

running() { [ -f "$dir/n$1.pid" ] && kill -0 "$(cat "$dir/n$1.pid")" 2>/dev/null; }

start() {
  local bin i tls=""
  [ "${1:-}" = "--tls" ] && tls=1
  bin=$(binary)
  mkdir -p "$dir"
  [ -n "$tls" ] && make_tls
  for i in "${nodes[@]}"; do
    if running "$i"; then echo "node $i already running (pid $(cat "$dir/n$i.pid"))"; continue; fi
    # shellcheck disable=SC2046 # tls_flags is a list of flags and plain paths
    "$bin" $( [ -n "$tls" ] && tls_flags "$i" ) \
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
  if [ -n "$tls" ]; then
    echo "Mutual TLS on the cluster port; for pgwctl:"
    echo "  export PGWCTL_CACERT=$dir/tls/ca.crt PGWCTL_CERT=$dir/tls/admin.crt PGWCTL_KEY=$dir/tls/admin.key"
  fi
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
  start) start "${2:-}" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--tls]|stop|status" >&2; exit 2 ;;
esac
