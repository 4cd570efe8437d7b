#!/usr/bin/env bash
# The inner half of e2e/run.sh: runs inside node-e2e.sh's namespaces, after
# `control-plane.sh up --node`, with KUBECONFIG and PATH set. Serves the host's MariaDB
# on the node address and as the Service mysql.databases.svc, then runs the test
# binaries listed in $SELECTED (name<TAB>path) with --test-threads=1 and $TEST_ARGS.
set -euo pipefail
log() { printf '[e2e-run] %s\n' "$*" >&2; }
: "${SELECTED:?run by e2e/run.sh}" "${E2E_DIR:?run by e2e/run.sh}"
: "${KSS_TEST_MYSQL_URL:?eval \"\$(scripts/mariadb.sh env)\" first}"
: "${KSS_E2E_MYSQL_FORWARD:?run by e2e/run.sh}"

# The host's MariaDB, forwarded by run.sh to the Unix socket $KSS_E2E_MYSQL_FORWARD, is
# served on the node address at its own port (the node's pods reach that address), and
# the tests' URLs say so.
node_ip=${KSS_E2E_NODE_IP:-10.200.0.1}
hostport=${KSS_TEST_MYSQL_URL#*@}
hostport=${hostport%%/*}
port=${hostport##*:}
socat "TCP-LISTEN:$port,bind=$node_ip,fork,reuseaddr" "UNIX-CONNECT:$KSS_E2E_MYSQL_FORWARD" &
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

# And as a database outside the cluster is usually named in it: the Service
# mysql.databases.svc:3306, without a selector, its endpoint the node address. The
# server's certificate carries that name (scripts/mariadb.sh), so pods can verify it.
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: databases}
---
apiVersion: v1
kind: Service
metadata: {name: mysql, namespace: databases}
spec:
  ports: [{name: mysql, port: 3306, targetPort: $port, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: mysql-host
  namespace: databases
  labels: {kubernetes.io/service-name: mysql}
addressType: IPv4
ports: [{name: mysql, port: $port, protocol: TCP}]
endpoints: [{addresses: ["$node_ip"], conditions: {ready: true}}]
EOF
export KSS_E2E_MYSQL_SERVICE=mysql.databases.svc:3306
log "MariaDB served at $node_ip:$port and as $KSS_E2E_MYSQL_SERVICE"

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
