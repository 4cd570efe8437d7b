#!/usr/bin/env bash
# Where a cluster's CPU goes at a paced rate: N `kss serve` instances on the test MariaDB,
# `kss loadgen` paced at RATE over them, and, over the counted part of the run, the CPU
# per decision of the keyservers (all instances together) and of mariadbd, and the
# commands mariadbd served per decision (its Com_* counters; Questions: every statement,
# not pings or prepares).
#
#   bench/cluster-cpu.sh KSS TYPE RATE [INSTANCES, default 1]
#
# KSS: a `kss` binary (build with `cargo build --release -p kss-server`, copy it out of
# target/ to compare two); TYPE: `decrypt` (distinct ciphertexts) or `search` (a decision
# and its counter, no pairing). The policy is bench/lib.sh's, with the same persistent
# per-profile throttle on searches; 16 profiles, 2 connections per instance, at most 256
# in flight, 2 s warm-up, $SECS s (default 10). PERF=1 also records the whole machine
# (`perf record -a -g`) over the counted part to $PERF_OUT (default
# target/cluster-cpu.perf.data; read it with `perf report --sort comm,dso`). MariaDB is
# started if missing (scripts/mariadb.sh); each run uses a fresh database, dropped at the
# end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,18p "$0" >&2; exit 2; }
kss=$1 type=$2 rate=$3 n=${4:-1} secs=${SECS:-10}
case $type in
  search) kind=(--type search) ;;
  decrypt) kind=(--distinct-ciphertexts 4096) ;;
  *) echo "TYPE must be decrypt or search" >&2; exit 2 ;;
esac
source bench/lib.sh
setup_bench_cluster "kss_cpu_$$"
mariadbd_pid=$(cat "$(dirname "$KSS_TEST_MYSQL_SOCKET")/mariadbd.pid")

for ((i = 0; i < n; i++)); do start_cluster_instance "$i" "$work"; done
also=()
for ((j = 1; j < n; j++)); do also+=(--also-endpoint "${endpoints[$j]}"); done

$kss loadgen --endpoint "${endpoints[0]}" "${also[@]}" --ca "$work/i0/tls/ca.pem" --json \
  --warmup 2 --duration "$secs" --profiles 16 --connections $((2 * n)) --concurrency 256 \
  --rate "$rate" "${kind[@]}" > "$work/load.json" 2> "$work/load.log" &
loadgen=$!
wait_running "$work/load.log" "$loadgen"
sleep 2 # the warm-up
ticks() { # CPU clock ticks (user + system) of the given processes
  local sum=0 p
  for p in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$sum"
}
statements() { # the server's counters of client commands, as NAME=VALUE words
  root_sql "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_stmt_execute', \
    'Com_stmt_prepare', 'Com_stmt_close', 'Com_begin', 'Com_commit', 'Com_rollback')" |
    awk 'NR > 1 {printf "%s=%s ", $1, $2}'
}
k0=$(ticks "${pids[@]}") m0=$(ticks "$mariadbd_pid") s0=$(statements) t0=$(date +%s.%N)
if [ -n "${PERF:-}" ]; then # the whole machine, call graphs, over the counted part
  perf record -q -F 999 -a -g -o "${PERF_OUT:-target/cluster-cpu.perf.data}" \
    -- sleep $((secs - 2)) 2> /dev/null
else
  sleep $((secs - 2))
fi
k1=$(ticks "${pids[@]}") m1=$(ticks "$mariadbd_pid") s1=$(statements) t1=$(date +%s.%N)
wait "$loadgen"
python3 - "$work/load.json" "$k0" "$k1" "$m0" "$m1" "$t0" "$t1" "$(getconf CLK_TCK)" \
  "$type" "$n" "$s0" "$s1" << 'PY'
import json, sys
load = json.load(open(sys.argv[1]))
k0, k1, m0, m1 = map(int, sys.argv[2:6])
t0, t1, hz = float(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
rate, lat = load["approved_per_second"], load["latency_ms"]
decisions = rate * (t1 - t0)
per = lambda ticks: ticks / hz * 1e6 / decisions
print(f"{sys.argv[9]}, {sys.argv[10]} instance(s), paced at {load['target_rate']:.0f}/s: "
      f"{rate:.0f}/s, p50/p99/p99.9 {lat['p50']:.1f} / {lat['p99']:.1f} / {lat['p999']:.1f} ms; "
      f"CPU per decision: keyservers {per(k1 - k0):.0f} µs, mariadbd {per(m1 - m0):.0f} µs; "
      f"errors {load.get('errors_by_code') or {}}")
words = lambda s: dict(w.split("=") for w in s.split())
s0, s1 = words(sys.argv[11]), words(sys.argv[12])
print("  per decision: " + ", ".join(
    f"{k} {(int(s1[k]) - int(s0[k])) / decisions:.2f}" for k in sorted(s0)))
PY
