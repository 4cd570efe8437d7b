#!/usr/bin/env bash
# The soak (not in CI): a long paced load on a cluster under a fault every minute, to show
# that nothing drifts. In one run on this machine:
#
#   1. criterion: the crypto floor F (as bench/keyserver.sh).
#   2. 3 `kss serve` instances (release) on one MariaDB database, each reaching it through
#      its own toxiproxy and running on its own libfaketime clock, a persistent
#      per-profile throttle, `--audit-retention 5m` (with `--max-clock-skew 120`, so the
#      replay guard keeps 4 min), `kss loadgen` paced at 0.5 × F over the 3 instances
#      for SECONDS (default 1800), one JSON line of answers and latency per minute.
#   3. Every FAULT_EVERY seconds (default 60) the next fault of a fixed cycle, held 5 s:
#      mariadbd hung (SIGSTOP), one instance's database traffic blackholed, slowed
#      (400 ± 300 ms) or cut downstream only (lost acknowledgements), its clock 90 s
#      ahead, the instance paused (SIGSTOP), killed (SIGKILL, then started again on the
#      same port), mariadbd killed (SIGKILL, then started again).
#   4. Every minute, per instance: resident memory and open file descriptors; of the
#      database: its sessions, the size of the keyserver's tables and the audit's rows.
#
# Prints a Markdown table, one row per minute, then the whole run's figures; raw files go
# to $OUT (default target/bench-soak). Needs what scripts/mariadb.sh and
# scripts/fault-tools.sh set up (both are run here).
#
# Usage: bench/soak.sh [SECONDS]      FAULT_EVERY=60 RATE_OF_F=0.5 bench/soak.sh 1800
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
every=${FAULT_EVERY:-60}
rate_of_f=${RATE_OF_F:-0.5}
out=${OUT:-target/bench-soak}
mkdir -p "$out"
source bench/lib.sh
eval "$(bash scripts/mariadb.sh up)"
eval "$(bash scripts/fault-tools.sh)"

cargo build --release -q -p kss-server
kss=$target_dir/release/kss
measure_floor "$out"
rate=$(python3 -c "print(round($floor * $rate_of_f))")
echo "== F = $floor/s; load paced at $rate requests/s for $secs s, a fault every $every s" >&2

db_name="kss_soak_$$"
root_sql() {
  mariadb --no-defaults --protocol=socket --socket="$KSS_TEST_MYSQL_SOCKET" -u root -N -B -e "$1"
}
root_sql "CREATE DATABASE $db_name"
db_base="${KSS_TEST_MYSQL_URL%%\?*}"
db_query="${KSS_TEST_MYSQL_URL#"$db_base"}"
db="${db_base%/*}/$db_name${db_query:-?ssl-mode=DISABLED}"
db_port="${db_base##*:}"
db_port="${db_port%%/*}"

work=$(mktemp -d)
toxi_port=$(free_port)
"$KSS_TOXIPROXY_SERVER" -host 127.0.0.1 -port "$toxi_port" > "$out/toxiproxy.log" 2>&1 &
toxi_pid=$!
toxi() { "$KSS_TOXIPROXY_CLI" --host "http://127.0.0.1:$toxi_port" "$@" > /dev/null; }
pids=()
loadgen_pid=
cleanup() {
  [ -n "$loadgen_pid" ] && kill "$loadgen_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null || true; done
  kill "$toxi_pid" 2>/dev/null || true
  bash scripts/mariadb.sh thaw-db > /dev/null 2>&1 || true
  bash scripts/mariadb.sh start-db > /dev/null 2>&1 || true
  wait 2>/dev/null || true
  root_sql "DROP DATABASE IF EXISTS $db_name" || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do toxi list 2>/dev/null && break; sleep 0.1; done

$kss --data-dir "$work/i0" --db-uri "$db" create --ignore-security-checks --threshold 1 \
  > /dev/null 2>&1
write_bench_policy "$work/policy.yml"
$kss --data-dir "$work/i0" policy load "$work/policy.yml" > /dev/null

ports=() metrics_ports=() proxies=()
for i in 0 1 2; do
  ports+=("$(free_port)")
  metrics_ports+=("$(free_port)")
  proxies+=("$(free_port)")
  toxi create --listen "127.0.0.1:${proxies[$i]}" --upstream "127.0.0.1:$db_port" "kss-i$i"
  echo "+0" > "$work/clock-$i"
done
run_instance() { # index: starts (or starts again) instance i on its ports
  local i=$1 dir="$work/i$1" via
  via="${db/":$db_port/"/":${proxies[$i]}/"}"
  rm -f "$out/serve-$i.out"
  LD_PRELOAD="$KSS_FAKETIME_LIB" FAKETIME_TIMESTAMP_FILE="$work/clock-$i" \
    FAKETIME_CACHE_DURATION=1 FAKETIME_DONT_FAKE_MONOTONIC=1 RUST_LOG=warn \
    $kss --data-dir "$dir" serve --self-signed-tls --instance-name "i$i" \
    --db-uri "$via" \
    --listen "127.0.0.1:${ports[$i]}" --metrics-listen "127.0.0.1:${metrics_ports[$i]}" \
    --audit-retention 5m --max-clock-skew 120 \
    > "$out/serve-$i.out" 2>> "$out/serve-$i.log" &
  pids[$i]=$!
  wait_serving "$out/serve-$i.out"
}
for i in 0 1 2; do
  join_cluster_instance "$i"
  run_instance "$i"
done

faults=(db-hang blackhole latency lost-acks clock-jump instance-pause instance-crash db-crash)
apply() { # fault instance
  case $1 in
    db-hang) bash scripts/mariadb.sh freeze-db ;;
    db-crash) bash scripts/mariadb.sh kill-db ;;
    blackhole)
      toxi toxic add -t timeout -a timeout=0 -n down "kss-i$2"
      toxi toxic add -t timeout -a timeout=0 -u -n up "kss-i$2" ;;
    latency) toxi toxic add -t latency -a latency=400 -a jitter=300 -n slow "kss-i$2" ;;
    lost-acks) toxi toxic add -t timeout -a timeout=0 -n down "kss-i$2" ;;
    clock-jump) echo "+90" > "$work/clock-$2" ;;
    instance-pause) kill -STOP "${pids[$2]}" ;;
    instance-crash) kill -KILL "${pids[$2]}"; wait "${pids[$2]}" 2>/dev/null || true ;;
  esac
}
heal() { # fault instance
  case $1 in
    db-hang) bash scripts/mariadb.sh thaw-db ;;
    db-crash) bash scripts/mariadb.sh start-db ;;
    blackhole) toxi toxic remove -n down "kss-i$2"; toxi toxic remove -n up "kss-i$2" ;;
    latency) toxi toxic remove -n slow "kss-i$2" ;;
    lost-acks) toxi toxic remove -n down "kss-i$2" ;;
    clock-jump) echo "+0" > "$work/clock-$2" ;;
    instance-pause) kill -CONT "${pids[$2]}" ;;
    instance-crash) run_instance "$2" ;;
  esac
}

sample() { # minute
  local line="$1" i pid
  for i in 0 1 2; do
    pid=${pids[$i]}
    line+=" $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    line+=" $(ls "/proc/$pid/fd" 2>/dev/null | wc -l)"
  done
  line+=" $(root_sql "SELECT COUNT(*) FROM information_schema.processlist WHERE db = '$db_name'" 2>/dev/null || echo -1)"
  line+=" $(root_sql "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables WHERE table_schema = '$db_name'" 2>/dev/null || echo -1)"
  line+=" $(root_sql "SELECT COUNT(*) FROM $db_name.audit" 2>/dev/null || echo -1)"
  echo "$line" >> "$out/samples.txt"
}

echo "minute rss0_kb fds0 rss1_kb fds1 rss2_kb fds2 db_sessions db_bytes audit_rows" > "$out/samples.txt"
: > "$out/faults.txt"
sample 0
$kss loadgen --endpoint "https://127.0.0.1:${ports[0]}" \
  --also-endpoint "https://127.0.0.1:${ports[1]}" --also-endpoint "https://127.0.0.1:${ports[2]}" \
  --ca "$work/i0/tls/ca.pem" --json --warmup 2 --duration "$secs" --rate "$rate" \
  --report-every 60 --profiles 16 --concurrency 512 --connections 6 \
  --distinct-ciphertexts 2048 > "$out/soak.json" 2> "$out/loadgen.log" &
loadgen_pid=$!
# The clock of the faults and samples starts with the measured load (after onboarding,
# encrypting and the warm-up).
until grep -q "loadgen: running" "$out/loadgen.log" 2>/dev/null; do
  kill -0 "$loadgen_pid" 2>/dev/null || { echo "loadgen failed: $(tail -5 "$out/loadgen.log")" >&2; exit 1; }
  sleep 0.2
done
sleep 2
start=$(date +%s)
n=0 minute=1
while kill -0 "$loadgen_pid" 2>/dev/null; do
  now=$(date +%s)
  if [ $((now - start)) -ge $((n * every + every / 2)) ] && [ $((now - start + 10)) -lt "$secs" ]; then
    fault=${faults[$((n % ${#faults[@]}))]}
    target=$((n % 3))
    echo "$((now - start)) $fault i$target" >> "$out/faults.txt"
    apply "$fault" "$target" >> "$out/nemesis.log" 2>&1 || echo "apply $fault failed" >> "$out/nemesis.log"
    sleep 5
    heal "$fault" "$target" >> "$out/nemesis.log" 2>&1 || echo "heal $fault failed" >> "$out/nemesis.log"
    n=$((n + 1))
  fi
  if [ $((now - start)) -ge $((minute * 60)) ]; then
    sample "$minute"
    minute=$((minute + 1))
  fi
  sleep 1
done
wait "$loadgen_pid" || { echo "loadgen failed: $(tail -5 "$out/loadgen.log")" >&2; exit 1; }
loadgen_pid=
sample end

python3 - "$out" "$floor" "$rate" "$secs" "$every" <<'PY'
import json, sys
out, floor, rate, secs, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
lines = [json.loads(l) for l in open(f"{out}/loadgen.log") if l.startswith("{")]
rows = [l.split() for l in open(f"{out}/samples.txt")][1:]
faults = [l.split() for l in open(f"{out}/faults.txt")]
print(f"F = {floor:.0f}/s; paced at {rate:.0f}/s = {rate/floor:.2f} × F for {secs} s; a fault every {every} s ({len(faults)} applied)")
print()
print("| minute | fault | approved/s | denied | errors | p50 ms | p99 ms | p99.9 ms | RSS MiB (3) | fds (3) | DB sessions | DB MiB | audit rows |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |")
prev = 0.0
for k, l in enumerate(lines):
    span = l["at_seconds"] - prev
    prev = l["at_seconds"]
    if span < 1:
        continue  # the last interval's few requests after the run's end
    s = rows[k + 1] if k + 1 < len(rows) else rows[-1]
    rss = "/".join(f"{int(s[c]) / 1024:.0f}" for c in (1, 3, 5))
    fds = "/".join(s[c] for c in (2, 4, 6))
    hit = [f"{f[1]} {f[2]}" for f in faults if k * 60 <= int(f[0]) < (k + 1) * 60]
    print(f"| {k + 1} | {', '.join(hit)} | {l['approved'] / span:.0f} | {l['denied']} | {l['errors']} | {l['p50_ms']:.1f} | {l['p99_ms']:.1f} | {l['p999_ms']:.1f} | {rss} | {fds} | {s[7]} | {int(s[8]) / 2**20:.1f} | {s[9]} |")
r = json.load(open(f"{out}/soak.json"))
lat = r["latency_ms"]
print()
print(f"whole run: {r['approved']} approved ({r['approved_per_second']:.0f}/s), denied {r['denied_by_reason']}, errors {r['errors_by_code']}; p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, p99.9 {lat['p999']:.1f} ms, max {lat['max']:.0f} ms")
PY
