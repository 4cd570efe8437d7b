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

# The test MariaDB (started if missing) and a fresh database named $1 on it. Sets db (its
# URL: the same server and query as the test URL, which asks for plaintext,
# ssl-mode=DISABLED; kss verifies TLS unless an address says otherwise). Remove it with
# `root_sql "DROP DATABASE IF EXISTS $1"`.
create_bench_database() {
  eval "$(bash scripts/mariadb.sh up)"
  root_sql "CREATE DATABASE $1"
  local base="${KSS_TEST_MYSQL_URL%%\?*}" query="${KSS_TEST_MYSQL_URL#"${KSS_TEST_MYSQL_URL%%\?*}"}"
  db="${base%/*}/$1${query:-?ssl-mode=DISABLED}"
}

root_sql() {
  mariadb --no-defaults --protocol=socket --socket="$KSS_TEST_MYSQL_SOCKET" -u root -e "$1"
}

# write_bench_policy, plus searches under the same kind of throttle: a decision with its
# counter, no ciphertext.
write_cluster_policy() {
  write_bench_policy "$1"
  cat >> "$1" <<'YAML'
search:
  - - rule: per-profile-throttle-rule
      per_day: 1000000000
      persistent: true
YAML
}

# A cluster's first instance, for $kss on a fresh database named $1 (create_bench_database):
# sets work (a temporary directory, instance i's data in $work/i<i>), empty pids, endpoints
# and mports, and a trap that stops the instances and drops the database at exit; creates
# instance 0's identity and loads write_cluster_policy's policy.
setup_bench_cluster() {
  bench_db_name=$1
  create_bench_database "$bench_db_name"
  work=$(mktemp -d)
  pids=() endpoints=() mports=()
  trap cleanup_bench_cluster EXIT
  $kss --data-dir "$work/i0" --db-uri "$db" create --ignore-security-checks --threshold 1 \
    > /dev/null 2>&1
  write_cluster_policy "$work/policy.yml"
  $kss --data-dir "$work/i0" policy load "$work/policy.yml" > /dev/null
}

cleanup_bench_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  root_sql "DROP DATABASE IF EXISTS $bench_db_name" || true
  rm -rf "$work"
}

# Instance $1's data directory on $db: instance 0's master key and TLS files, initialized
# (nothing to do for instance 0).
join_cluster_instance() {
  local dir="$work/i$1"
  [ "$1" -gt 0 ] || return 0
  mkdir -p "$dir" && chmod 700 "$dir"
  install -m 600 "$work/i0/master.key" "$dir/master.key"
  $kss --data-dir "$dir" --db-uri "$db" initialize > /dev/null 2>&1
  mkdir -p "$dir/tls"
  install -m 600 "$work/i0/tls/ca.pem" "$work/i0/tls/server.pem" "$work/i0/tls/server.key" "$dir/tls/"
}

# Starts cluster instance $1 (joined first), its output in $2/serve-$1.*; appends to pids,
# endpoints and mports.
start_cluster_instance() {
  local i=$1 logs=$2 port mport
  join_cluster_instance "$i"
  port=$(free_port)
  mport=$(free_port)
  rm -f "$logs/serve-$i.out"   # wait_serving must not read a previous run's
  RUST_LOG=warn $kss --data-dir "$work/i$i" serve --self-signed-tls --instance-name "i$i" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    > "$logs/serve-$i.out" 2> "$logs/serve-$i.log" &
  pids+=($!)
  wait_serving "$logs/serve-$i.out"
  endpoints+=("https://127.0.0.1:$port")
  mports+=("$mport")
}
