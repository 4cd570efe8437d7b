#!/usr/bin/env bash
# Cluster mode against the crypto floor, measured in one run on this machine:
#
#   1. criterion: the crypto floor F (as bench/keyserver.sh).
#   2. 3 `kss serve` instances (release) sharing one MariaDB database, a persistent
#      per-profile throttle (every approval reads and writes its counter in the shared
#      database, exactly), `kss loadgen` on the same cores spreading its connections over
#      the 3 instances, distinct ciphertexts, flat out → approved/s, ratio to F
#      (target ≥ 0.6 × F).
#   3. The database ceiling: 1, 3 and 6 instances on the one database, flat out, with
#      `search` requests (a decision and its counter, no pairing: the decision path alone)
#      and with decrypts (the same plus the crypto) → decisions/s for each.
#   4. Cluster latency at a realistic rate: decrypts paced at 0.5 × F over 3 instances
#      (at most $PACED_CONCURRENCY, default 256, in flight) →
#      p50 / p99 / p99.9 (target p99 < 25 ms).
#   5. 10 instances; `kss policy load --wait` 20 times: the time from storing a version to
#      every online instance reporting it applied → p50 / p99 / max (target p99 < 2 s).
#
# Needs the test MariaDB (started if missing): eval "$(bash scripts/mariadb.sh up)".
# Usage: bench/cluster.sh [SECONDS per load run, default 10]
# For every load run, instance 0's own view (bench/server-stats.py): its decision batches'
# mean size and p99 duration, its Approve p99.
# Prints a Markdown table; raw reports go to $OUT (default $CARGO_TARGET_DIR or target,
# then /bench-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
source bench/lib.sh
out=${OUT:-$target_dir/bench-cluster}
mkdir -p "$out"
cargo build --release -q -p kss-server
kss=$target_dir/release/kss
measure_floor "$out"

setup_bench_cluster "kss_bench_$$"

for i in 0 1 2 3 4 5; do start_cluster_instance "$i" "$out"; done

# loadgen over the first $2 instances, its JSON report to $out/$1.json and instance 0's
# own view of the run (bench/server-stats.py) to $out/$1.server.json; the rest of the
# arguments are loadgen's.
load_over() {
  local name=$1 n=$2 also=() j
  shift 2
  for ((j = 1; j < n; j++)); do also+=(--also-endpoint "${endpoints[$j]}"); done
  echo "== load: $name" >&2
  $kss loadgen --endpoint "${endpoints[0]}" "${also[@]}" --ca "$work/i0/tls/ca.pem" --json \
    --warmup 2 --duration "$secs" --profiles 16 --connections $((2 * n)) "$@" \
    > "$out/$name.json" 2> "$out/$name.loadgen.log" &
  local loadgen=$!
  wait_running "$out/$name.loadgen.log" "$loadgen"
  python3 bench/server-stats.py snapshot "${pids[0]}" "${mports[0]}" > "$out/$name.before.json"
  wait "$loadgen"
  python3 bench/server-stats.py snapshot "${pids[0]}" "${mports[0]}" > "$out/$name.after.json"
  python3 bench/server-stats.py diff "$out/$name.before.json" "$out/$name.after.json" \
    > "$out/$name.server.json"
}
distinct=$(python3 -c "print(max(256, int($floor * $secs * 1.3 / 16) + 1))")
echo "== load: 3 instances, distinct ciphertexts, flat out" >&2
load_over cluster3 3 --concurrency "${CONCURRENCY:-96}" --distinct-ciphertexts "$distinct"
for n in 1 3 6; do
  echo "== database ceiling: $n instance(s), searches, flat out" >&2
  load_over "search-$n" "$n" --type search --concurrency $((32 * n))
  echo "== database ceiling: $n instance(s), decrypts, flat out" >&2
  load_over "decrypt-$n" "$n" --concurrency $((32 * n)) --distinct-ciphertexts "$distinct"
done
echo "== latency: 3 instances, decrypts paced at 0.5 x F" >&2
load_over paced3 3 --concurrency "${PACED_CONCURRENCY:-256}" \
  --rate "$(python3 -c "print($floor * 0.5)")" --distinct-ciphertexts "$distinct"

for i in 6 7 8 9; do start_cluster_instance "$i" "$out"; done
echo "== rollout: 20 policy versions to 10 instances" >&2
: > "$out/rollout.txt"
for n in $(seq 20); do
  { cat "$work/policy.yml"; echo "# rollout $n"; } > "$work/p$n.yml"
  $kss --data-dir "$work/i0" policy load "$work/p$n.yml" --wait 10 >> "$out/rollout.txt"
done

python3 - "$out" "$floor" "$limit" "$share_ns" "$sig_ns" "$(nproc)" <<'PY'
import json, re, sys, math
out, floor, limit, share_ns, sig_ns, cores = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
r = json.load(open(f"{out}/cluster3.json"))
times = sorted(float(m.group(2)) for m in re.finditer(r"applied by (\d+)/\1 online instances in ([0-9.]+) s", open(f"{out}/rollout.txt").read()))
instances = set(re.findall(r"applied by (\d+)/", open(f"{out}/rollout.txt").read()))
assert len(times) == 20, f"expected 20 rollouts, got {len(times)}"
def pct(p): return times[max(0, math.ceil(p / 100 * len(times)) - 1)]
def ms(v): return "—" if v is None else ("∞" if v == float("inf") else f"{v*1e3:g} ms")
def server(name):
    s = json.load(open(f"{out}/{name}.server.json"))
    b, a = s["decision_batch_size"], s["approve_seconds"]
    return (f"i0: batch {b['mean'] or 0:.1f}, batch p99 ≤ {ms(s['decision_batch_seconds']['p99_le'])}, "
            f"Approve p99 ≤ {ms(a['p99_le'])}")
rate = r["approved_per_second"]
print("| measure | value | ratio | target |")
print("| --- | ---: | ---: | --- |")
print(f"| verified share (decrypt_share, median) | {share_ns/1e3:.0f} µs | | |")
print(f"| ed25519 verify (median) | {sig_ns/1e3:.0f} µs | | |")
print(f"| F = {cores} cores ÷ (share + signature) | {floor:.0f} /s | 1.00 × F | |")
print(f"| L = {cores} cores ÷ approval crypto in a batch of 64 | {limit:.0f} /s | {limit/floor:.2f} × F | |")
print(f"| 3 instances on MariaDB, exact persistent quotas, distinct ciphertexts, flat out | {rate:.0f} approved/s (p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms; {server('cluster3')}) | {rate/floor:.2f} × F = {rate/limit:.2f} × L | ≥ 0.6 × F |")
for kind, what in (("search", "searches (decision + counter, no pairing)"), ("decrypt", "decrypts (decision + counter + crypto)")):
    for n in (1, 3, 6):
        d = json.load(open(f"{out}/{kind}-{n}.json"))
        print(f"| {n} instance(s), {what}, flat out | {d['approved_per_second']:.0f} decisions/s (p99 {d['latency_ms']['p99']:.1f} ms; {server(f'{kind}-{n}')}) | {d['approved_per_second']/floor:.2f} × F | |")
p = json.load(open(f"{out}/paced3.json"))
pl = p["latency_ms"]
print(f"| 3 instances, decrypts paced at 0.5 × F ({p['target_rate']:.0f}/s, {p['concurrency']} in flight at most): p50 / p99 / p99.9 | {pl['p50']:.1f} / {pl['p99']:.1f} / {pl['p999']:.1f} ms ({p['approved_per_second']:.0f} approved/s; {server('paced3')}) | | p99 < 25 ms |")
print(f"| policy rollout to {'/'.join(sorted(instances))} instances, 20 loads: p50 / p99 / max | {pct(50):.3f} / {pct(99):.3f} / {times[-1]:.3f} s | | p99 < 2 s |")
for name in ["cluster3", "paced3"] + [f"{k}-{n}" for k in ("search", "decrypt") for n in (1, 3, 6)]:
    d = json.load(open(f"{out}/{name}.json"))
    errs, denied = d.get("errors_by_code") or {}, d.get("denied_by_reason") or {}
    if errs or denied:
        print(f"\n{name}: errors {errs}, denied {denied}")
PY
