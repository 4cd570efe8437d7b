#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for e2e tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which fakes
# one Node and makes scheduled pods Running without running anything).
#
#   e2e/control-plane.sh up       # PKI, kubeconfigs, start everything, wait Ready
#   e2e/control-plane.sh up --node  # the same with a real node instead of kwok:
#                                 # containerd, kubelet, kube-proxy, CoreDNS (e2e/node.sh;
#                                 # only inside the namespaces of e2e/node-e2e.sh)
#   e2e/control-plane.sh down     # stop every process recorded by `up`
#   e2e/control-plane.sh env      # print `export KUBECONFIG=...` / `export PATH=...`
#   e2e/control-plane.sh status   # show recorded processes and whether they live
#
#   eval "$(e2e/control-plane.sh env)"; kubectl get nodes
#
# Environment:
#   KSS_E2E_STATE        state dir: pki, kubeconfigs, logs, pids, etcd data
#                        (default /tmp/kss-e2e; wiped by `up`)
#   KSS_E2E_BIN          dir with the binaries (default: output of build-tools.sh)
#   KSS_E2E_CACHE        passed on to build-tools.sh
#   KSS_E2E_PRE_CM_HOOK  executable run once the apiserver is ready and before
#                        kube-controller-manager starts, with KUBECONFIG and PATH
#                        set (e.g. to install CRDs: the garbage collector only
#                        discovers CRD kinds added later every ~30 s)
#   KSS_E2E_NODE_NAME    name of the fake kwok node (default kwok-node-0; with a
#                        real node: kss-node-0)
#   KSS_E2E_NODE         "real" = `up --node`; anything else (default): kwok
#   KSS_E2E_POD_CIDR     kwok's pod IP range (default 127.N.0.1/16 with N picked at
#                        random in 1-254 among the /16s nothing on this host has
#                        bound): loopback pod IPs, so that a process started for a
#                        pod can bind its pod IP on this host (see e2e/README.md)
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${KSS_E2E_STATE:-/tmp/kss-e2e}
NODE_MODE=${KSS_E2E_NODE:-kwok}
if [[ ${1:-} == up && ${2:-} == --node ]]; then NODE_MODE=real; fi
[[ $NODE_MODE == real ]] || NODE_MODE=kwok
if [[ $NODE_MODE == real ]]; then
  NODE_NAME=${KSS_E2E_NODE_NAME:-kss-node-0}
else
  NODE_NAME=${KSS_E2E_NODE_NAME:-kwok-node-0}
fi
MARKER="$STATE/.kss-e2e-state"
PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
ADMIN_KUBECONFIG="$STATE/admin.kubeconfig"
# Start order; `down` stops them in reverse (the real node's first, see node.sh).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok
  containerd kubelet kube-proxy coredns)

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- helpers

# free_port <var>: set <var> to a TCP port on 127.0.0.1 that nobody listens on
# and that was not handed out before in this run. Ports are taken below the
# kernel's ephemeral range (32768+) so outgoing connections do not grab them.
USED_PORTS=" "
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

# pick_pod_cidr: a loopback /16 (127.N.0.0, N in 1-254) in which no TCP socket is
# bound on this host, so that two control planes (e.g. two e2e runs at once)
# hardly ever hand out the same pod IPs. /proc/net/tcp shows 127.N.x.y as
# YYXXNN7F (little-endian hex).
pick_pod_cidr() {
  local n hex i
  for i in $(seq 1 50); do
    n=$((1 + RANDOM % 254))
    printf -v hex '%02X7F' "$n"
    if ! grep -qE "^ *[0-9]+: [0-9A-F]{4}$hex:" /proc/net/tcp 2>/dev/null; then
      echo "127.$n.0.1/16"
      return 0
    fi
  done
  echo "127.1.0.1/16"
}

# wait_for <seconds> <description> <command...>: poll until the command succeeds.
wait_for() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    check_alive || return 1
    sleep 0.5
  done
  log "$what: ok"
}

# Fail fast when a component we started has died, showing its log tail.
check_alive() {
  local c pid
  for c in "${COMPONENTS[@]}"; do
    [[ -f "$PIDS/$c.pid" ]] || continue
    pid=$(<"$PIDS/$c.pid")
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$c (pid $pid) exited; last lines of $LOGS/$c.log:"
      tail -n 20 "$LOGS/$c.log" >&2 || true
      return 1
    fi
  done
}

# start <name> <args...>: run $BIN/<name> in the background, log to the state dir.
start() {
  local name=$1
  shift
  log "starting $name"
  "$BIN/$name" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  echo "$BIN/$name" >"$PIDS/$name.exe"
}

# Is <pid> still the process we started as <exe>? (guards against PID reuse)
is_ours() {
  local pid=$1 exe=$2
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$exe")" ]]
}

bin_dir() {
  if [[ -n ${KSS_E2E_BIN:-} ]]; then
    echo "$KSS_E2E_BIN"
  elif [[ -f "$STATE/bin-dir" ]]; then
    cat "$STATE/bin-dir"
  else
    "$E2E_DIR/build-tools.sh" | tail -n 1
  fi
}

# ---------------------------------------------------------------- PKI

# new_cert <name> <subject> <ca name> <extensions>: EC P-256 key + cert signed by <ca>.
new_cert() {
  local name=$1 subj=$2 ca=$3 ext=$4
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

new_ca() { # <name> <CN>
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$1.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$1.crt"
}

gen_pki() {
  mkdir -p "$PKI"
  local client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  new_ca ca kss-e2e-ca
  new_ca front-proxy-ca kss-e2e-front-proxy-ca
  new_cert apiserver "/CN=kube-apiserver" ca "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1${APISERVER_EXTRA_SANS:-},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  new_cert admin "/O=system:masters/CN=kss-e2e-admin" ca "$client"
  new_cert controller-manager "/CN=system:kube-controller-manager" ca "$client"
  new_cert scheduler "/CN=system:kube-scheduler" ca "$client"
  # kwok acts for every fake node and pod; system:masters keeps its RBAC trivial.
  new_cert kwok "/O=system:masters/CN=kwok" ca "$client"
  new_cert front-proxy-client "/CN=front-proxy-client" front-proxy-ca "$client"
  # Service-account token signing key pair.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  chmod 600 "$PKI"/*.key
}

# write_kubeconfig <file> <user cert name>
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kss-e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: kss-e2e
  context:
    cluster: kss-e2e
    user: $2
current-context: kss-e2e
EOF
}

# The kwok Stage objects shipped in the kwok module (kustomize/stage/...).
write_kwok_config() {
  local kwok_dir
  kwok_dir=$(cd "$E2E_DIR/tools/kwok" && GOWORK=off GOTOOLCHAIN=local go mod download -json sigs.k8s.io/kwok |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d "$kwok_dir/kustomize/stage" ]] || die "kwok module sources not found (got '$kwok_dir')"
  local f first=1
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f "$kwok_dir/kustomize/stage/$f" ]] || die "missing kwok stage $f"
    ((first)) || echo "---"
    first=0
    cat "$kwok_dir/kustomize/stage/$f"
  done >"$STATE/kwok-stages.yaml"
}

# ---------------------------------------------------------------- commands

running_components() {
  local c
  for c in "${COMPONENTS[@]}"; do
    [[ -f "$PIDS/$c.pid" && -f "$PIDS/$c.exe" ]] || continue
    if is_ours "$(<"$PIDS/$c.pid")" "$(<"$PIDS/$c.exe")"; then
      echo "$c"
    fi
  done
}

cmd_up() {
  if [[ -d "$PIDS" && -n "$(running_components)" ]]; then
    die "a control plane is already running from $STATE; run '$0 down' first"
  fi
  if [[ -e "$STATE" ]]; then
    [[ -f "$MARKER" ]] || die "$STATE exists but is not a kss-e2e state dir; refusing to wipe it"
    rm -rf "$STATE"
  fi
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  touch "$MARKER"

  BIN=$(bin_dir)
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b missing; run e2e/build-tools.sh"
  done
  echo "$BIN" >"$STATE/bin-dir"
  echo "$NODE_MODE" >"$STATE/node-mode"
  # API server flags that differ with a real node: pods reach it through the
  # `kubernetes` Service, whose endpoint is the node's address.
  API_NODE_ARGS=(--bind-address=127.0.0.1 --endpoint-reconciler-type=none)
  if [[ $NODE_MODE == real ]]; then
    # shellcheck source=e2e/node.sh
    source "$E2E_DIR/node.sh"
    node_preflight
    node_net_up
    node_cgroups_up
    APISERVER_EXTRA_SANS=",IP:$NODE_IP"
    API_NODE_ARGS=(--bind-address=0.0.0.0 --advertise-address="$NODE_IP"
      --endpoint-reconciler-type=lease
      --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
      --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
    --kubelet-preferred-address-types=InternalIP,Hostname)
  fi
  export PATH="$BIN:$PATH"
  export KUBECONFIG="$ADMIN_KUBECONFIG"

  # From here on, a failure stops whatever was started.
  UP_OK=0
  trap 'if [[ $UP_OK != 1 ]]; then log "up failed; logs are in $LOGS"; cmd_down; fi' EXIT

  local t0=$SECONDS
  free_port ETCD_PORT
  free_port ETCD_PEER_PORT
  free_port API_PORT
  free_port CM_PORT
  free_port SCHED_PORT
  free_port KWOK_PORT
  POD_CIDR=${KSS_E2E_POD_CIDR:-$(pick_pod_cidr)}
  cat >"$STATE/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
CM_PORT=$CM_PORT
SCHED_PORT=$SCHED_PORT
KWOK_PORT=$KWOK_PORT
POD_CIDR=$POD_CIDR
EOF

  gen_pki
  [[ $NODE_MODE != real ]] || node_gen_pki
  write_kubeconfig "$ADMIN_KUBECONFIG" admin
  write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler
  write_kubeconfig "$STATE/kwok.kubeconfig" kwok
  write_kwok_config

  start etcd \
    --name=kss-e2e \
    --data-dir="$STATE/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="kss-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true \
    --log-level=warn
  wait_for 30 "etcd health" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    "${API_NODE_ARGS[@]}" \
    --secure-port="$API_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --allow-privileged=true
  wait_for 90 "kube-apiserver /readyz" kubectl get --raw /readyz

  if [[ -n ${KSS_E2E_PRE_CM_HOOK:-} ]]; then
    log "running pre-controller-manager hook $KSS_E2E_PRE_CM_HOOK"
    "$KSS_E2E_PRE_CM_HOOK" || die "pre-controller-manager hook failed"
  fi

  start kube-controller-manager \
    --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$CM_PORT" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true \
    --controllers='*' \
    --leader-elect=false \
    --kube-api-qps=500 \
    --kube-api-burst=1000

  start kube-scheduler \
    --kubeconfig="$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHED_PORT" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --leader-elect=false \
    --kube-api-qps=500 \
    --kube-api-burst=1000

  if [[ $NODE_MODE == real ]]; then
    wait_for 60 "kube-controller-manager /healthz" curl -kfsS "https://127.0.0.1:$CM_PORT/healthz"
    wait_for 60 "kube-scheduler /healthz" curl -kfsS "https://127.0.0.1:$SCHED_PORT/healthz"
    node_up
    wait_for 60 "default ServiceAccount in namespace default" \
      kubectl -n default get serviceaccount default
    UP_OK=1
    trap - EXIT
    log "control plane with real node $NODE_NAME up in $((SECONDS - t0)) s (state: $STATE, node IP $NODE_IP, pods in $POD_SUBNET)"
    return 0
  fi

  start kwok \
    --kubeconfig="$STATE/kwok.kubeconfig" \
    --config="$STATE/kwok-stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --node-ip=127.0.0.1 \
    --cidr="$POD_CIDR" \
    --server-address="127.0.0.1:$KWOK_PORT"

  wait_for 60 "kube-controller-manager /healthz" curl -kfsS "https://127.0.0.1:$CM_PORT/healthz"
  wait_for 60 "kube-scheduler /healthz" curl -kfsS "https://127.0.0.1:$SCHED_PORT/healthz"

  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
EOF
  wait_for 60 "node $NODE_NAME Ready" \
    kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  # Pods must not be created in a namespace before its default ServiceAccount exists.
  wait_for 60 "default ServiceAccount in namespace default" \
    kubectl -n default get serviceaccount default

  UP_OK=1
  trap - EXIT
  log "control plane up in $((SECONDS - t0)) s (state: $STATE, pod IPs from $POD_CIDR)"
  log "use: eval \"\$($0 env)\""
}

cmd_down() {
  [[ -d "$PIDS" ]] || { log "nothing recorded in $STATE"; return 0; }
  if [[ "$(cat "$STATE/node-mode" 2>/dev/null)" == real ]]; then
    # shellcheck source=e2e/node.sh
    source "$E2E_DIR/node.sh"
    node_down
  fi
  local i c pid exe stopping=()
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c=${COMPONENTS[i]}
    [[ -f "$PIDS/$c.pid" && -f "$PIDS/$c.exe" ]] || continue
    pid=$(<"$PIDS/$c.pid")
    exe=$(<"$PIDS/$c.exe")
    if is_ours "$pid" "$exe"; then
      # Stop etcd only once everything that talks to it is gone.
      if [[ $c == etcd ]]; then
        wait_gone "${stopping[@]}"
        stopping=()
      fi
      log "stopping $c (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      stopping+=("$pid:$exe:$c")
    fi
    rm -f "$PIDS/$c.pid" "$PIDS/$c.exe"
  done
  wait_gone "${stopping[@]}"
  log "down"
}

# wait_gone <pid:exe:name>...: wait up to 15 s for TERM, then KILL.
wait_gone() {
  local deadline=$((SECONDS + 15)) entry pid exe name alive
  while :; do
    alive=0
    for entry in "$@"; do
      pid=${entry%%:*}
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || return 0
    if ((SECONDS >= deadline)); then
      for entry in "$@"; do
        IFS=: read -r pid exe name <<<"$entry"
        if is_ours "$pid" "$exe"; then
          log "killing $name (pid $pid) with SIGKILL"
          kill -KILL "$pid" 2>/dev/null || true
        fi
      done
      sleep 0.5
      return 0
    fi
    sleep 0.2
  done
}

cmd_env() {
  local bin
  bin=$(bin_dir)
  printf 'export KUBECONFIG=%q\n' "$ADMIN_KUBECONFIG"
  # $PATH is meant to expand in the caller's shell, not here.
  # shellcheck disable=SC2016
  printf 'export PATH=%q:"$PATH"\n' "$bin"
}

cmd_status() {
  local c pid mode
  mode=$(cat "$STATE/node-mode" 2>/dev/null || echo kwok)
  for c in "${COMPONENTS[@]}"; do
    # Only the components of the node kind this state dir was brought up with.
    case $mode:$c in
      kwok:containerd | kwok:kubelet | kwok:kube-proxy | kwok:coredns | real:kwok) continue ;;
    esac
    if [[ -f "$PIDS/$c.pid" ]]; then
      pid=$(<"$PIDS/$c.pid")
      if is_ours "$pid" "$(<"$PIDS/$c.exe")"; then
        echo "$c running (pid $pid)"
      else
        echo "$c dead (pid $pid)"
      fi
    else
      echo "$c not started"
    fi
  done
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up [--node]|down|env|status" >&2
    exit 2
    ;;
esac
