#!/usr/bin/env bash
# The keyserver's throughput against its crypto floor, measured in one run on this machine.
#
#   1. criterion: the crypto floor (ciphertext verification, decryption share, share
#      verification, ed25519); F = cores / (verified share + signature check) per second.
#   2. `kss serve` (release) on SQLite with a persistent per-profile throttle, over TLS, and
#      `kss loadgen` on the same machine:
#        a. flat out, every ciphertext distinct        → approved/s, ratio to F (target ≥ 0.75)
#        b. paced at 0.5 × F, distinct ciphertexts     → p99 latency (target < 20 ms)
#        c. flat out, every ciphertext a repeat        → approved/s, ratio to (a) (target ≥ 3)
#
# Usage: bench/keyserver.sh [SECONDS per load run, default 10]
# Prints a Markdown table; the raw reports go to $OUT (default target/bench-keyserver).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
out=${OUT:-target/bench-keyserver}
mkdir -p "$out"
cores=$(nproc)

source bench/lib.sh
cargo build --release -q -p kss-server
kss=target/release/kss

measure_floor "$out"

data=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
$kss --data-dir "$data/d" create --ignore-security-checks --threshold 1 > /dev/null 2>&1
write_bench_policy "$data/policy.yml"
$kss --data-dir "$data/d" policy load "$data/policy.yml" > /dev/null
port=$(free_port)
mport=$(free_port)
rm -f "$out/serve.out"   # wait_serving must not read the previous server's
RUST_LOG=warn $kss --data-dir "$data/d" serve --self-signed-tls --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$mport" > "$out/serve.out" 2> "$out/serve.log" &
server=$!
wait_serving "$out/serve.out"

load() { # name, extra loadgen args...
  local name=$1; shift
  echo "== load: $name" >&2
  $kss loadgen --endpoint "https://127.0.0.1:$port" --ca "$data/d/tls/ca.pem" --json --warmup 2 \
    --duration "$secs" "$@" > "$out/$name.json"
}
# Distinct: more ciphertexts than the run can send, so none is ever a repeat.
distinct=$(python3 -c "print(max(256, int($floor * $secs * 1.3 / 16) + 1))")
load distinct --profiles 16 --concurrency 64 --distinct-ciphertexts "$distinct"
load paced --profiles 16 --concurrency 256 --distinct-ciphertexts "$distinct" \
  --rate "$(python3 -c "print(int($floor * 0.5))")"
load repeated --profiles 16 --concurrency 64 --distinct-ciphertexts 1 --repeat-share 1.0

# The same paced run with commits synced at checkpoints only (survives kill -9, not a power
# loss): what per-commit fsync costs in latency.
kill "$server"; wait "$server" 2>/dev/null || true
rm -f "$out/serve.out"   # wait_serving must not read the previous server's
RUST_LOG=warn $kss --data-dir "$data/d" serve --self-signed-tls --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$mport" --sqlite-sync normal > "$out/serve.out" 2> "$out/serve.log" &
server=$!
wait_serving "$out/serve.out"
load paced-normal --profiles 16 --concurrency 256 --distinct-ciphertexts "$distinct" \
  --rate "$(python3 -c "print(int($floor * 0.5))")"

python3 - "$out" "$floor" "$share_ns" "$sig_ns" "$cores" <<'PY'
import json, sys
out, floor, share_ns, sig_ns, cores = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
r = {n: json.load(open(f"{out}/{n}.json")) for n in ("distinct", "paced", "repeated", "paced-normal")}
def rate(n): return r[n]["approved_per_second"]
def lat(n, p): return r[n]["latency_ms"][p]
print(f"| measure | value | ratio | target |")
print(f"| --- | ---: | ---: | --- |")
print(f"| verified share (decrypt_share, median) | {share_ns/1e3:.0f} µs | | |")
print(f"| ed25519 verify (median) | {sig_ns/1e3:.0f} µs | | |")
def median(name):
    return json.load(open(f"target/criterion/{name}/new/estimates.json"))["median"]["point_estimate"]
for n in (4, 16):
    print(f"| batched verification, per ciphertext in a batch of {n} | {median(f'crypto_verify_batch/{n}')/n/1e3:.0f} µs | | |")
print(f"| F = {cores} cores ÷ (share + signature) | {floor:.0f} /s | 1.00 | |")
print(f"| flat out, distinct ciphertexts | {rate('distinct'):.0f} approved/s | {rate('distinct')/floor:.2f} × F | ≥ 0.75 × F |")
print(f"| paced at 0.5 × F: p50 / p99 / p99.9 | {lat('paced','p50'):.1f} / {lat('paced','p99'):.1f} / {lat('paced','p999'):.1f} ms | ({rate('paced'):.0f} approved/s) | p99 < 20 ms |")
print(f"| same, `--sqlite-sync normal` | {lat('paced-normal','p50'):.1f} / {lat('paced-normal','p99'):.1f} / {lat('paced-normal','p999'):.1f} ms | ({rate('paced-normal'):.0f} approved/s) | |")
print(f"| flat out, every ciphertext repeated | {rate('repeated'):.0f} approved/s | {rate('repeated')/rate('distinct'):.2f} × distinct | ≥ 3 × distinct |")
for n in r:
    errs = r[n].get("errors_by_code") or {}
    denied = r[n].get("denied_by_reason") or {}
    if errs or denied:
        print(f"\n{n}: errors {errs}, denied {denied}")
PY
