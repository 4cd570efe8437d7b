# Shared by the benchmark scripts (sourced): the crypto floor, free ports, servers.

# Where cargo builds (the scripts honour CARGO_TARGET_DIR).
target_dir=${CARGO_TARGET_DIR:-target}

# The crypto floor from criterion, in one run. Sets share_ns, sig_ns and floor
# (F = cores ÷ (verified share + signature check) per second: one ciphertext at a time), and
# approval_ns and limit (L = cores ÷ the cheapest approval the design allows: a ciphertext
# verified in a batch of 64, its decryption share and its signature check, measured
# together by crypto/approval_batched/64). $1: output directory.
measure_floor() {
  local out=$1
  echo "== crypto floor (criterion)" >&2
  cargo bench -q -p kss-crypto --bench floor -- --warm-up-time 1 --measurement-time 5 \
    'crypto/(decrypt_share_with_verify|ed25519_verify|ciphertext_verify|decryption_share_verified|share_verify|cache_hit|verify_batch/(4|16|64)|approval_batched/(16|64))$' \
    > "$out/criterion.txt" 2>&1
  share_ns=$(median_ns crypto/decrypt_share_with_verify)
  sig_ns=$(median_ns crypto/ed25519_verify)
  floor=$(python3 -c "print(round($(nproc) * 1e9 / ($share_ns + $sig_ns)))")
  approval_ns=$(python3 -c "print($(median_ns crypto/approval_batched/64) / 64)")
  limit=$(python3 -c "print(round($(nproc) * 1e9 / $approval_ns))")
}

median_ns() {
  python3 -c "import json; print(json.load(open('$target_dir/criterion/${1/\//_}/new/estimates.json'))['median']['point_estimate'])"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until a server's stdout ($1) announces it serves.
wait_serving() {
  for _ in $(seq 300); do grep -q "serving on" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "server did not start: $1" >&2
  return 1
}

# Waits until a `kss loadgen` (PID $2) logging to $1 starts sending (or has ended).
wait_running() {
  until grep -q "loadgen: running" "$1" 2>/dev/null; do
    kill -0 "$2" 2>/dev/null || return 0
    sleep 0.05
  done
}

# A policy approving decrypts of /batch under a persistent per-profile throttle that never
# runs out, so every approval reads and writes its counter in the database.
write_bench_policy() {
  cat > "$1" <<'YAML'
decrypt:
  - - rule: meta-rule
      paths: [/batch]
    - rule: per-profile-throttle-rule
      per_day: 1000000000
      persistent: true
YAML
}
