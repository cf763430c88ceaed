#!/usr/bin/env bash
# Side-by-side benchmark: the reference Pushgateway (Debian `prometheus-pushgateway`), one pgw
# node and a 3-node pgw cluster, all on loopback on this machine, driven by the same
# workloads of `pgw-load`. Prints a table of absolute figures (medians over the runs) and
# ratios to the reference.
#
#   benches/compare.sh                 # full comparison, 3 runs of every workload (~13 min)
#   benches/compare.sh --runs 5 --duration 10
#   benches/compare.sh --quick         # 1 run, short workloads (~2 min)
#   benches/compare.sh --guard         # CI regression guard: small pushes only, seconds;
#                                      # fails when single-node throughput < 10x the reference
#   benches/compare.sh --scale         # pgw only: 1M series in 10k groups, scrape, restart
#
# Options: --runs N, --duration S (seconds per timed workload), --out DIR (keep the raw
# JSON of every run there), --min-ratio R (guard threshold, default 10), --systems LIST
# (comma-separated subset of ref,single,cluster).
# Environment: PGW_BIN, PGW_LOAD (binaries; built with `cargo build --release` when unset),
# REF_BIN (default: prometheus-pushgateway on PATH or /usr/bin), CARGO_PROFILE (release).
#
# Only processes this script started are stopped (by PID, in an EXIT trap); data lives in a
# temporary directory that is removed at exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mode=full
runs=3
duration=10
out_dir=
min_ratio=10
systems=ref,single,cluster
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick; runs=1; duration=3 ;;
    --guard) mode=guard; runs=1; duration=3; systems=ref,single ;;
    --scale) mode=scale; runs=1; systems=cluster ;;
    --runs) runs=$2; shift ;;
    --duration) duration=$2; shift ;;
    --out) out_dir=$2; shift ;;
    --min-ratio) min_ratio=$2; shift ;;
    --systems) systems=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

profile=${CARGO_PROFILE:-release}
if [ -z "${PGW_BIN:-}" ] || [ -z "${PGW_LOAD:-}" ]; then
  echo "== building pgw and pgw-load (profile $profile)" >&2
  (cd "$root" && cargo build --profile "$profile" --bin pgw --bin pgw-load >&2)
fi
target_dir=$root/target/$profile
pgw_bin=${PGW_BIN:-$target_dir/pgw}
load_bin=${PGW_LOAD:-$target_dir/pgw-load}
ref_bin=${REF_BIN:-$(command -v prometheus-pushgateway || echo /usr/bin/prometheus-pushgateway)}
if [[ ",$systems," == *",ref,"* ]] && [ ! -x "$ref_bin" ]; then
  echo "reference Pushgateway not found ($ref_bin): apt-get install prometheus-pushgateway" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pgw-compare.XXXXXX")
results=${out_dir:-$work/results}
mkdir -p "$results"
running=()

stop_all() {
  local pid deadline
  for pid in "${running[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${running[@]}"; do
    deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; fi
      sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
  done
  running=()
}
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N free loopback ports.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_ready() { # url pid
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$1/-/ready" 2>/dev/null; do
    if ! kill -0 "$2" 2>/dev/null; then echo "server $1 (pid $2) exited" >&2; return 1; fi
    if [ $SECONDS -ge $deadline ]; then echo "server $1 not ready after 60 s" >&2; return 1; fi
    sleep 0.1
  done
}

# Starts a system; sets `urls` (comma-separated), `pids` (comma-separated) and `http_ports`.
start_system() { # name
  local name=$1 dir=$work/data-$1-$RANDOM
  mkdir -p "$dir"
  urls= pids=
  case "$name" in
    ref)
      local port
      port=$(free_ports 1)
      "$ref_bin" --web.listen-address="127.0.0.1:$port" --persistence.file="$dir/x" \
        --log.level=error >"$dir/log" 2>&1 &
      running+=($!)
      urls=http://127.0.0.1:$port pids=$!
      http_ports=($port)
      ;;
    single)
      local port
      port=$(free_ports 1)
      "$pgw_bin" --web.listen-address "127.0.0.1:$port" --storage.path "$dir/n1" \
        --log.level warn >"$dir/log" 2>&1 &
      running+=($!)
      urls=http://127.0.0.1:$port pids=$!
      http_ports=($port)
      ;;
    cluster)
      local ports i peers=
      read -r -a ports <<<"$(free_ports 6)"
      http_ports=("${ports[@]:0:3}")
      for i in 1 2 3; do peers+="${peers:+,}$i=127.0.0.1:${ports[$((i + 2))]}"; done
      for i in 1 2 3; do
        start_cluster_node "$dir" "$i" "$peers" "${ports[$((i - 1))]}" "${ports[$((i + 2))]}"
        urls+="${urls:+,}http://127.0.0.1:${ports[$((i - 1))]}"
        pids+="${pids:+,}${running[-1]}"
      done
      cluster_dir=$dir cluster_peers=$peers cluster_ports=("${ports[@]}")
      ;;
  esac
  local u p
  IFS=, read -r -a u <<<"$urls"
  IFS=, read -r -a p <<<"$pids"
  for i in "${!u[@]}"; do wait_ready "${u[$i]}" "${p[$i]}"; done
}

start_cluster_node() { # dir id peers http grpc
  "$pgw_bin" --web.listen-address "127.0.0.1:$4" --storage.path "$1/n$2" \
    --cluster.node-id "$2" --cluster.peers "$3" --cluster.listen-address "127.0.0.1:$5" \
    --web.self-metrics-path /self-metrics --log.level warn >>"$1/n$2.log" 2>&1 &
  running+=($!)
}

load() { # result-name args...
  local name=$1
  shift
  "$load_bin" "$@" --json >"$results/$name.json"
  printf '   %-28s %s\n' "$name" "$(python3 "$root/benches/compare_report.py" --one "$results/$name.json")" >&2
}

# Waits until every URL serves the same telemetry body; prints "true <seconds>" or "false".
replicas_identical() { # urls
  local u start=$SECONDS h first ok
  IFS=, read -r -a u <<<"$1"
  while [ $((SECONDS - start)) -lt 60 ]; do
    ok=true first=
    for url in "${u[@]}"; do
      h=$(curl -fsS "$url/metrics" | sha256sum | cut -d' ' -f1)
      if [ -z "$first" ]; then first=$h; elif [ "$h" != "$first" ]; then ok=false; fi
    done
    if $ok; then echo "true $((SECONDS - start))"; return; fi
    sleep 0.5
  done
  echo false
}

d=$duration
run_full() { # system run
  local s=$1 r=$2
  start_system "$s"
  echo "== $s run $r: $urls (pids $pids)" >&2
  # Small pushes into a fresh store (100 groups, ~1k series stored), then into a store holding
  # 1,000 groups of 10 series (10k series: the reference's per-push cost grows with the store).
  load "$s.$r.push32_fresh" push --url "$urls" -c 32 --series 10 --groups 100 -d "$d" \
    --warmup 1 --job fresh --pid "$pids"
  load "$s.$r.preload10k" preload --url "$urls" -c 8 --groups 1000 --series 10 --job small \
    --pid "$pids"
  load "$s.$r.push32" push --url "$urls" -c 32 --series 10 --groups 1000 -d "$d" --warmup 1 \
    --job small --pid "$pids"
  load "$s.$r.push1" push --url "$urls" -c 1 --series 10 --groups 1000 -d "$d" --warmup 0.5 \
    --job small --pid "$pids"
  # 100k series: 50 groups of 2,000 (the reference's push cost grows with the store, so
  # fewer, larger pushes keep its preload within a minute).
  load "$s.$r.preload100k" preload --url "$urls" -c 4 --groups 50 --series 2000 \
    --job bulk --family pgw_bulk_gauge --pid "$pids"
  if [ "$s" = cluster ]; then
    read -r same secs <<<"$(replicas_identical "$urls")"
    echo "{\"identical\": $same, \"converged_s\": ${secs:-null}}" >"$results/$s.$r.replicas.json"
    echo "   replicas byte-identical: $same" >&2
  fi
  load "$s.$r.push1_at100k" push --url "$urls" -c 1 --series 10 --groups 1000 -d "$d" \
    --job small --pid "$pids"
  load "$s.$r.scrape100k" scrape --url "${urls%%,*}" --scrape-connections 1 -d "$d" --pid "$pids"
  load "$s.$r.mixed100k" mixed --url "$urls" -c 8 --series 10 --groups 1000 -d "$d" \
    --scrape-connections 1 --scrape-interval-ms 1000 --job small --pid "$pids"
  stop_all
}

run_guard() { # system run
  local s=$1 r=$2
  start_system "$s"
  echo "== $s run $r: $urls (pids $pids)" >&2
  load "$s.$r.preload10k" preload --url "$urls" -c 8 --groups 1000 --series 10 --job small \
    --pid "$pids"
  load "$s.$r.push32" push --url "$urls" -c 32 --series 10 --groups 1000 -d "$d" --warmup 0.5 \
    --job small --pid "$pids"
  stop_all
}

run_scale() { # system run
  local s=$1 r=$2
  start_system "$s"
  echo "== $s run $r: $urls (pids $pids)" >&2
  load "$s.$r.preload1m" preload --url "$urls" -c 32 --groups 10000 --series 100 \
    --job bulk --family pgw_bulk_gauge --pid "$pids"
  # The first scrape after the preload renders all 1M series (nothing cached yet).
  local first
  first=$(curl -fsS -o /dev/null -w '%{time_total}' "${urls%%,*}/metrics")
  echo "{\"first_scrape_s\": $first}" >"$results/$s.$r.firstscrape.json"
  echo "   first (uncached) scrape of node 1: ${first}s" >&2
  if [ "$s" = cluster ]; then
    read -r same secs <<<"$(replicas_identical "$urls")"
    echo "{\"identical\": $same, \"converged_s\": ${secs:-null}}" >"$results/$s.$r.replicas.json"
    echo "   replicas byte-identical: $same" >&2
  fi
  load "$s.$r.scrape1m" scrape --url "${urls%%,*}" --scrape-connections 1 -d "$d" --pid "$pids"
  load "$s.$r.push1_at1m" push --url "$urls" -c 1 --series 10 --groups 100 -d "$d" \
    --job seq --pid "$pids"
  # Scrapes while 4 connections keep replacing groups of the 1M-series family: every
  # scrape follows changes to it.
  load "$s.$r.mixed1m" mixed --url "$urls" -c 4 --series 100 --groups 10000 -d "$d" \
    --job bulk --family pgw_bulk_gauge --scrape-connections 1 --scrape-interval-ms 1000 \
    --pid "$pids"
  if [ "$s" = cluster ]; then
    # Restart node 3 on its directory while the others keep taking pushes; time until it
    # is ready and serves the same bytes as node 1.
    local pid3 t0 u3 u1 ready_s caught_s h1 h3
    IFS=, read -r -a pp <<<"$pids"
    pid3=${pp[2]}
    kill -TERM "$pid3"
    while kill -0 "$pid3" 2>/dev/null; do sleep 0.1; done
    "$load_bin" push --url "${urls%,*}" -c 4 --series 10 --groups 100 -d 3 --job whilegone \
      --json >"$results/$s.$r.push_while_down.json"
    t0=$(date +%s.%N)
    start_cluster_node "$cluster_dir" 3 "$cluster_peers" "${cluster_ports[2]}" "${cluster_ports[5]}"
    u3=http://127.0.0.1:${cluster_ports[2]} u1=http://127.0.0.1:${cluster_ports[0]}
    wait_ready "$u3" "${running[-1]}"
    ready_s=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
    caught_s=null
    for _ in $(seq 1 600); do
      h1=$(curl -fsS "$u1/metrics" | sha256sum) h3=$(curl -fsS "$u3/metrics" | sha256sum)
      if [ "$h1" = "$h3" ]; then
        caught_s=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
        break
      fi
      sleep 0.1
    done
    local rss3
    rss3=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/${running[-1]}/status")
    echo "{\"ready_s\": $ready_s, \"caught_up_s\": $caught_s, \"rss_bytes\": $rss3}" \
      >"$results/$s.$r.restart.json"
    echo "   restarted node 3: ready after ${ready_s}s, caught up after ${caught_s}s" >&2
  fi
  stop_all
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "== reference: $("$ref_bin" --version 2>&1 | head -1)" >&2
IFS=, read -r -a sys_list <<<"$systems"
for r in $(seq 1 "$runs"); do
  for s in "${sys_list[@]}"; do
    case "$mode" in
      full|quick) run_full "$s" "$r" ;;
      guard) run_guard "$s" "$r" ;;
      scale) run_scale "$s" "$r" ;;
    esac
  done
done

report_args=(--dir "$results" --mode "$mode")
if [ "$mode" = guard ]; then report_args+=(--min-ratio "$min_ratio"); fi
python3 "$root/benches/compare_report.py" "${report_args[@]}"
