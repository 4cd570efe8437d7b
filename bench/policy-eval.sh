#!/usr/bin/env bash
# Throughput of `kss policy eval` over a request log, through the real binary.
#
#   bench/policy-eval.sh                      # 1,000,000 lines, example policy, UTC
#   LINES=200000 RUNS=10 TZ_NAME=Europe/Paris bench/policy-eval.sh
#
# Builds `kss` in release, writes the log once to target/bench/requests-$LINES.jsonl
# (bench/gen-requests.py; reused on later runs), checks that every line evaluates (one
# output line each, no errors) and prints the mix of decisions, then times `kss policy eval
# --requests <log> > /dev/null` with hyperfine if it is installed (`apt-get install
# hyperfine`), else with `date +%s.%N`, and prints lines/s for the median run.
# Target (issue): >= 500,000 lines/s.
set -euo pipefail
cd "$(dirname "$0")/.."

lines="${LINES:-1000000}"
runs="${RUNS:-5}"
tz="${TZ_NAME:-UTC}"
policy="${POLICY:-bench/example-policy.yml}"
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench"
log="$out/requests-$lines.jsonl"
kss="$target/release/kss"

cargo build --release --quiet -p kss-server --bin kss
mkdir -p "$out"
if [[ ! -s "$log" ]]; then
  echo "writing $lines requests to $log ..." >&2
  python3 bench/gen-requests.py --lines "$lines" -o "$log.tmp"
  mv "$log.tmp" "$log"
fi

cmd=("$kss" policy eval --policy "$policy" --requests "$log" --tz "$tz")

# Check run (also brings the log into the page cache).
"${cmd[@]}" > "$out/decisions-$lines.jsonl"
got=$(wc -l < "$out/decisions-$lines.jsonl")
if [[ "$got" -ne "$lines" ]]; then
  echo "expected $lines output lines, got $got" >&2
  exit 1
fi
if grep -q '"error"' "$out/decisions-$lines.jsonl"; then
  echo "some lines were rejected:" >&2
  grep '"error"' "$out/decisions-$lines.jsonl" | sort | uniq -c | head >&2
  exit 1
fi
echo "decisions ($policy, --tz $tz):"
sort "$out/decisions-$lines.jsonl" | uniq -c | sort -rn

if command -v hyperfine > /dev/null; then
  hyperfine --warmup 1 --runs "$runs" --export-json "$out/policy-eval.json" \
    --command-name "kss policy eval ($lines lines)" "$(printf '%q ' "${cmd[@]}")"
  median=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"])' \
    "$out/policy-eval.json")
  timer=hyperfine
else
  times=()
  for _ in $(seq "$runs"); do
    start=$(date +%s.%N)
    "${cmd[@]}" > /dev/null
    end=$(date +%s.%N)
    times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.6f", b - a }')")
    echo "  ${times[-1]} s"
  done
  median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
  timer="date +%s.%N"
fi
python3 -c 'import sys; n, t, runs, timer = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
print("policy eval: %d lines in %.3f s (median of %s runs, %s) = %s lines/s" % (n, t, runs, timer, format(round(n / t), ",")))' \
  "$lines" "$median" "$runs" "$timer"
