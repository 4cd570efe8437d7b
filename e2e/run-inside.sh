#!/usr/bin/env bash
# The inner half of e2e/run.sh: runs inside node-e2e.sh's namespaces, after
# `control-plane.sh up --node`, with KUBECONFIG and PATH set. Serves the host's MariaDB
# on the node address, then runs the test binaries listed in $SELECTED (name<TAB>path)
# with --test-threads=1 and $TEST_ARGS.
set -euo pipefail
log() { printf '[e2e-run] %s\n' "$*" >&2; }
: "${SELECTED:?run by e2e/run.sh}" "${E2E_DIR:?run by e2e/run.sh}"
: "${KSS_TEST_MYSQL_URL:?eval \"\$(scripts/mariadb.sh env)\" first}"
: "${KSS_TEST_MYSQL_SOCKET:?eval \"\$(scripts/mariadb.sh env)\" first}"

# MariaDB listens on the host's loopback, which this network namespace does not share;
# its Unix socket is a file, reachable from here. socat serves it on the node address
# (where the node's pods reach it too) on the same port, and the tests' URLs say so.
node_ip=${KSS_E2E_NODE_IP:-10.200.0.1}
hostport=${KSS_TEST_MYSQL_URL#*@}
hostport=${hostport%%/*}
port=${hostport##*:}
socat "TCP-LISTEN:$port,bind=$node_ip,fork,reuseaddr" "UNIX-CONNECT:$KSS_TEST_MYSQL_SOCKET" &
for v in KSS_TEST_MYSQL_URL KSS_TEST_MYSQL_OTHER_URL; do
  if [[ -n ${!v:-} ]]; then
    export "$v=${!v/@$hostport\//@$node_ip:$port/}"
  fi
done
reached=
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/$node_ip/$port") 2>/dev/null; then reached=1; break; fi
  sleep 0.1
done
[[ -n $reached ]] || { log "socat does not listen on $node_ip:$port"; exit 1; }
log "MariaDB served at $node_ip:$port (socat to $KSS_TEST_MYSQL_SOCKET)"

# Each binary runs from e2e/ (as cargo test would), one test at a time; a failing binary
# does not hide the results of the others (as --no-fail-fast).
cd "$E2E_DIR"
read -r -a args <<<"${TEST_ARGS:-}"
failed=()
while IFS=$'\t' read -r name path; do
  log "running $name: $path --test-threads=1 ${args[*]}"
  if ! "$path" --test-threads=1 "${args[@]}"; then
    failed+=("$name")
  fi
done <"$SELECTED"
if ((${#failed[@]})); then
  log "failed: ${failed[*]}"
  exit 1
fi
