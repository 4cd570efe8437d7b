#!/usr/bin/env bash
# The keyserver's throughput against its crypto floor and limit, measured in one run here.
#
#   1. criterion: the crypto floor (ciphertext verification, decryption share, share
#      verification, ed25519); F = cores / (verified share + signature check) per second,
#      one ciphertext at a time; L = cores / the cheapest approval the design allows (a
#      ciphertext verified in a batch of 64, its share and its signature check).
#   2. `kss serve` (release) on SQLite with a persistent per-profile throttle, over TLS, and
#      `kss loadgen` on the same machine:
#        a. flat out, every ciphertext distinct (64, then 256 in flight) → approved/s, ratio to L (target ≥ 0.8)
#                                                        and to F
#        b. paced at 0.5 × L, distinct ciphertexts     → p50/p99/p99.9 (target p99 < 15 ms)
#        c. paced at 0.5 × F (the earlier rate)        → p50/p99/p99.9
#        d. flat out, every ciphertext a repeat        → approved/s, ratio to (a) (target ≥ 3)
#        e. (b) with `--sqlite-sync normal`, and (b) with `--verify-niceness 10` (the former
#           default: verification threads 10 nice levels below the serving threads)
#      For each run the server's own view (bench/server-stats.py): its request and decision
#      batch durations, batch sizes, and per nice value the CPU seconds of its threads and
#      the seconds they were runnable but waited for a CPU. With PERF=1, also a `perf
#      record` of the server per run, summarised by kind of work (bench/perf-buckets.py)
#      in $out/NAME.perf.json.
#
# Usage: bench/keyserver.sh [SECONDS per load run, default 10]
# Prints a Markdown table; the raw reports go to $OUT (default $CARGO_TARGET_DIR or target,
# then /bench-keyserver).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
source bench/lib.sh
out=${OUT:-$target_dir/bench-keyserver}
mkdir -p "$out"
cores=$(nproc)

cargo build --release -q -p kss-server
kss=$target_dir/release/kss

measure_floor "$out"

data=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
$kss --data-dir "$data/d" create --ignore-security-checks --threshold 1 > /dev/null 2>&1
write_bench_policy "$data/policy.yml"
$kss --data-dir "$data/d" policy load "$data/policy.yml" > /dev/null
port=$(free_port)
mport=$(free_port)
server=
start_server() { # extra serve args...
  if [ -n "$server" ]; then kill "$server"; wait "$server" 2>/dev/null || true; fi
  rm -f "$out/serve.out"   # wait_serving must not read the previous server's
  RUST_LOG=warn $kss --data-dir "$data/d" serve --self-signed-tls --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$mport" "$@" > "$out/serve.out" 2> "$out/serve.log" &
  server=$!
  wait_serving "$out/serve.out"
}

load() { # name, extra loadgen args...
  local name=$1; shift
  echo "== load: $name" >&2
  $kss loadgen --endpoint "https://127.0.0.1:$port" --ca "$data/d/tls/ca.pem" --json --warmup 2 \
    --duration "$secs" "$@" > "$out/$name.json" 2> "$out/$name.loadgen.log" &
  local loadgen=$! perf=
  # The server's view starts when the requests do (after onboarding and encrypting).
  wait_running "$out/$name.loadgen.log" "$loadgen"
  python3 bench/server-stats.py snapshot "$server" "$mport" > "$out/$name.before.json"
  if [ -n "${PERF:-}" ]; then
    perf record -q -F 499 -p "$server" -o "$out/$name.perf.data" 2> "$out/$name.perf.log" &
    perf=$!
  fi
  wait "$loadgen"
  if [ -n "$perf" ]; then
    kill -INT "$perf"; wait "$perf" || true
    python3 bench/perf-buckets.py "$out/$name.perf.data" > "$out/$name.perf.json" || true
  fi
  python3 bench/server-stats.py snapshot "$server" "$mport" > "$out/$name.after.json"
  python3 bench/server-stats.py diff "$out/$name.before.json" "$out/$name.after.json" \
    > "$out/$name.server.json"
}
# Distinct: more ciphertexts than the run can send, so none is ever a repeat.
distinct=$(python3 -c "print(max(256, int($limit * $secs * 1.3 / 16) + 1))")
half_l=$(python3 -c "print(int($limit * 0.5))")
half_f=$(python3 -c "print(int($floor * 0.5))")
start_server
load distinct --profiles 16 --concurrency 64 --distinct-ciphertexts "$distinct"
# Flat out with as many in flight as the paced runs: a longer queue, larger batches.
load distinct-256 --profiles 16 --concurrency 256 --distinct-ciphertexts "$distinct"
load paced --profiles 16 --concurrency 256 --distinct-ciphertexts "$distinct" --rate "$half_l"
load paced-f --profiles 16 --concurrency 256 --distinct-ciphertexts "$distinct" --rate "$half_f"
load repeated --profiles 16 --concurrency 64 --distinct-ciphertexts 1 --repeat-share 1.0

# The same paced run with commits synced at checkpoints only (survives kill -9, not a power
# loss): what per-commit fsync costs in latency.
start_server --sqlite-sync normal
load paced-normal --profiles 16 --concurrency 256 --distinct-ciphertexts "$distinct" \
  --rate "$half_l"
# The same paced run with the verification threads 10 nice levels below, the former default.
start_server --verify-niceness 10
load paced-nice10 --profiles 16 --concurrency 256 --distinct-ciphertexts "$distinct" \
  --rate "$half_l"

python3 - "$out" "$floor" "$limit" "$share_ns" "$sig_ns" "$approval_ns" "$cores" "$target_dir" <<'PY'
import json, sys
out, floor, limit, share_ns, sig_ns, approval_ns, cores, target = sys.argv[1:]
floor, limit, share_ns, sig_ns, approval_ns = map(float, (floor, limit, share_ns, sig_ns, approval_ns))
names = ("distinct", "distinct-256", "paced", "paced-f", "repeated", "paced-normal", "paced-nice10")
r = {n: json.load(open(f"{out}/{n}.json")) for n in names}
srv = {n: json.load(open(f"{out}/{n}.server.json")) for n in names}
def rate(n): return r[n]["approved_per_second"]
def lat(n):
    l = r[n]["latency_ms"]
    return f"{l['p50']:.1f} / {l['p99']:.1f} / {l['p999']:.1f} ms"
def median(name):
    return json.load(open(f"{target}/criterion/{name}/new/estimates.json"))["median"]["point_estimate"]
print("| measure | value | ratio | target |")
print("| --- | ---: | ---: | --- |")
print(f"| verified share (decrypt_share, median) | {share_ns/1e3:.0f} µs | | |")
print(f"| decryption share of a verified ciphertext (median) | {median('crypto_decryption_share_verified')/1e3:.0f} µs | | |")
print(f"| ed25519 verify (median) | {sig_ns/1e3:.0f} µs | | |")
for n in (4, 16, 64):
    print(f"| batched verification, per ciphertext in a batch of {n} | {median(f'crypto_verify_batch/{n}')/n/1e3:.0f} µs | | |")
for n in (16, 64):
    print(f"| approval crypto (batch of {n} verified + share + ed25519), per approval | {median(f'crypto_approval_batched/{n}')/n/1e3:.0f} µs | | |")
print(f"| F = {cores} cores ÷ (share + signature) | {floor:.0f} /s | {floor/limit:.2f} × L | |")
print(f"| L = {cores} cores ÷ approval crypto in a batch of 64 | {limit:.0f} /s | 1.00 × L | |")
print(f"| flat out, distinct ciphertexts | {rate('distinct'):.0f} approved/s | **{rate('distinct')/limit:.2f} × L** = {rate('distinct')/floor:.2f} × F | ≥ 0.8 × L |")
# The load generator runs on the same cores: what it took (its CPU over the window the
# server's view covers: from "loadgen: running" to its end), and the server's rate per
# core it got against L's per core.
def lg_cores(n): return r[n]["cpu_seconds"] / srv[n]["seconds"]
server_cores = srv["distinct"]["cores_used"]
print(f"| same, per core the server got ({server_cores} of {cores}; the load generator took {lg_cores('distinct'):.2f}) | {rate('distinct')/server_cores:.0f} approved/s per core | **{rate('distinct')/server_cores/(limit/float(cores)):.2f} × L** per core | |")
print(f"| same, 256 in flight | {rate('distinct-256'):.0f} approved/s | **{rate('distinct-256')/limit:.2f} × L** = {rate('distinct-256')/floor:.2f} × F | |")
print(f"| paced at 0.5 × L ({r['paced']['target_rate']:.0f}/s): p50 / p99 / p99.9 | {lat('paced')} | ({rate('paced'):.0f} approved/s) | p99 < 15 ms |")
print(f"| same, `--sqlite-sync normal` | {lat('paced-normal')} | ({rate('paced-normal'):.0f} approved/s) | |")
print(f"| same, `--verify-niceness 10` (the former default) | {lat('paced-nice10')} | ({rate('paced-nice10'):.0f} approved/s) | |")
print(f"| paced at 0.5 × F ({r['paced-f']['target_rate']:.0f}/s): p50 / p99 / p99.9 | {lat('paced-f')} | ({rate('paced-f'):.0f} approved/s) | |")
print(f"| flat out, every ciphertext repeated | {rate('repeated'):.0f} approved/s | {rate('repeated')/rate('distinct'):.2f} × distinct | ≥ 3 × distinct |")
print()
print("Server side (bench/server-stats.py, over each whole loadgen run, warm-up included; durations are upper bucket bounds; threads: CPU s / runnable-but-waiting s, by nice value):")
print()
nices = sorted({int(k) for n in names for k in srv[n]["threads_by_nice"]})
print("| run | server CPU per Approve (÷ L's crypto) | cores the server got (needed at the paced rate) | load generator's cores | Approve p50 / p99 | decision batch: mean size, p99 | verify batch mean size | " + " | ".join(f"threads at nice {k}" for k in nices) + " |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(nices))
def ms(v): return "—" if v is None else ("∞" if v == float("inf") else f"{v*1e3:g} ms")
for n in names:
    s = srv[n]
    t = s["threads_by_nice"]
    def th(k): return f"{t[k]['cpu_s']:.2f} / {t[k]['waiting_s']:.2f} s" if k in t else "—"
    vb = s["verify_batch_size"]["mean"]
    cpu = s["cpu_us_per_approve"]
    cpu = "—" if cpu is None else f"{cpu:.0f} µs ({cpu * 1e3 / approval_ns:.2f})"
    got = f"{s['cores_used']}"
    if r[n]["target_rate"] > 0 and s["cpu_us_per_approve"]:
        got += f" ({r[n]['target_rate'] * s['cpu_us_per_approve'] / 1e6:.2f})"
    print(f"| {n} | {cpu} | {got} | {lg_cores(n):.2f} | {ms(s['approve_seconds']['p50_le'])} / {ms(s['approve_seconds']['p99_le'])} | "
          f"{s['decision_batch_size']['mean'] or 0:.1f}, {ms(s['decision_batch_seconds']['p99_le'])} | "
          f"{'—' if vb is None else f'{vb:.1f}'} | " + " | ".join(th(str(k)) for k in nices) + " |")
for n in r:
    errs = r[n].get("errors_by_code") or {}
    denied = r[n].get("denied_by_reason") or {}
    if errs or denied:
        print(f"\n{n}: errors {errs}, denied {denied}")
PY
