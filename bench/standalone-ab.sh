#!/usr/bin/env bash
# Two `kss` binaries (say, before and after a change) under the same paced load, runs
# alternating, on the same machine in the same minutes: what bench/keyserver.sh cannot
# separate from the VM's drift between its runs.
#
#   bench/standalone-ab.sh OLD_KSS NEW_KSS [RATES, default "730 1200"] [RUNS, default 3]
#
# Each run: a fresh data directory, `kss serve` (SQLite, synced commits, a persistent
# per-profile throttle, TLS) and `kss loadgen` paced at RATE (16 profiles, 256 in flight,
# distinct ciphertexts, 2 s warm-up, $SECS s, default 15); the server's view over the
# counted part from bench/server-stats.py. One line per run: rate, latency percentiles,
# the server's CPU per approval and cores, the decision batches' mean duration and p99
# (upper bucket bound), the context switches per approval by thread name. The load
# generator is the same binary for both, $LOADGEN (default OLD_KSS), so that a change to
# `kss loadgen` does not move the server's share of the cores. Build each binary with
# `cargo build --release -p kss-server` at its commit and copy it out of target/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,16p "$0" >&2; exit 2; }
old=$1 new=$2 rates=${3:-730 1200} runs=${4:-3} secs=${SECS:-15} loadgen_kss=${LOADGEN:-$1}
source bench/lib.sh

work=$(mktemp -d)
server=
trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

one_run() { # kss binary, rate
  local kss=$1 rate=$2 data="$work/d" port mport
  rm -rf "$data" "$work"/*.json "$work"/*.log "$work"/*.out
  $kss --data-dir "$data" create --ignore-security-checks --threshold 1 > /dev/null 2>&1
  write_bench_policy "$work/policy.yml"
  $kss --data-dir "$data" policy load "$work/policy.yml" > /dev/null
  port=$(free_port); mport=$(free_port)
  RUST_LOG=warn $kss --data-dir "$data" serve --self-signed-tls --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$mport" > "$work/serve.out" 2> "$work/serve.log" &
  server=$!
  wait_serving "$work/serve.out"
  $loadgen_kss loadgen --endpoint "https://127.0.0.1:$port" --ca "$data/tls/ca.pem" --json \
    --warmup 2 --duration "$secs" --profiles 16 --concurrency 256 \
    --distinct-ciphertexts 4096 --rate "$rate" > "$work/load.json" 2> "$work/load.log" &
  local loadgen=$!
  wait_running "$work/load.log" "$loadgen"
  sleep 2 # the warm-up
  python3 bench/server-stats.py snapshot "$server" "$mport" > "$work/before.json"
  sleep $((secs - 1))
  python3 bench/server-stats.py snapshot "$server" "$mport" > "$work/after.json"
  wait "$loadgen"
  python3 bench/server-stats.py diff "$work/before.json" "$work/after.json" > "$work/server.json"
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  python3 - "$work/load.json" "$work/server.json" <<'PY'
import json, sys
load, srv = (json.load(open(p)) for p in sys.argv[1:])
l, d = load["latency_ms"], srv["decision_batch_seconds"]
print(f"{load['approved_per_second']:.0f} approved/s, p50/p99/p99.9 "
      f"{l['p50']:.1f} / {l['p99']:.1f} / {l['p999']:.1f} ms; server "
      f"{srv['cpu_us_per_approve']:.0f} µs CPU per approval, {srv['cores_used']} cores; "
      f"decision batch mean {d['mean'] * 1000:.2f} ms, p99 ≤ {d['p99_le'] * 1000:g} ms; "
      "context switches per approval (voluntary + involuntary): " + ", ".join(
          f"{name} {n['voluntary_per_approve']:.1f} + {n['nonvoluntary_per_approve']:.1f}"
          for name, n in sorted(srv["switches_by_thread_name"].items())
          if n["voluntary_per_approve"] or n["nonvoluntary_per_approve"]))
PY
}

for rate in $rates; do
  for run in $(seq "$runs"); do
    for side in old new; do
      kss=$old; [ "$side" = new ] && kss=$new
      printf '%s, %s/s, run %s: ' "$side" "$rate" "$run"
      one_run "$kss" "$rate"
    done
  done
done
