#!/usr/bin/env bash
# Checks of the real node, run by e2e/node-e2e.sh inside its namespaces once
# `control-plane.sh up --node` is done (KUBECONFIG and PATH set):
#
#   e2e/node-e2e.sh               # = e2e/node-e2e.sh -- e2e/node-smoke.sh
#
# One PASS:/FAIL: line per check, then `node-smoke: N passed, N failed`; exit status 1
# if any check failed. KSS_NODE_SMOKE_VERBOSE=1 shows what each passing check saw too. Smallest first: the kubelet's node is Ready; a pod of the pause
# image runs; then a kss pod from the kss image becomes Ready through its gRPC
# readiness probe, running as uid 65532 on a read-only root filesystem; a Service name
# resolves through CoreDNS and reaches the pod through kube-proxy.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${KSS_E2E_STATE:-/tmp/kss-node-e2e}
# shellcheck disable=SC1091
source "$STATE/ports.env"
NODE=${KSS_E2E_NODE_NAME:-kss-node-0}
NS=kss-node-smoke
NODE_BIN=$(cat "$STATE/node-bin-dir")
CTR=("$NODE_BIN/ctr" --address "$STATE/node/containerd/containerd.sock" -n k8s.io)
KSS_IMAGE=${KSS_IMAGE:-ghcr.io/kss-project/kss:0.1.0}
WORK=$(mktemp -d -t kss-node-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0
check() {
  local name=$1 fn=$2 out="$WORK/check-$2.log" start=$SECONDS
  (
    set -Eeuo pipefail
    trap 'echo ">>> failed (exit $?) at node-smoke.sh line $LINENO: $BASH_COMMAND"' ERR
    "$fn"
  ) >"$out" 2>&1 &
  if wait $!; then
    PASSED=$((PASSED + 1))
    printf 'PASS: %s (%ds)\n' "$name" $((SECONDS - start))
    [[ ${KSS_NODE_SMOKE_VERBOSE:-} != 1 ]] || sed 's/^/    | /' "$out"
  else
    FAILED=$((FAILED + 1))
    printf 'FAIL: %s (%ds)\n' "$name" $((SECONDS - start))
    sed 's/^/    | /' "$out"
  fi
}

until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "timed out: $*"
      return 1
    fi
    sleep 1
  done
}

# The PID (in this namespace) of the task of container <name> of pod <pod>.
container_pid() {
  local pod=$1 name=$2 id
  id=$(kubectl -n "$NS" get pod "$pod" -o jsonpath="{.status.containerStatuses[?(@.name==\"$name\")].containerID}")
  id=${id#containerd://}
  [[ -n $id ]] || return 1
  "${CTR[@]}" tasks ls | awk -v id="$id" '$1 == id {print $2}'
}

check_node() {
  kubectl get node "$NODE" -o wide
  kubectl wait --for=condition=Ready "node/$NODE" --timeout=5s
  local v
  v=$(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}')
  echo "$v"
  [[ $v == "v1.36.3 containerd://2.4.2" ]]
  # No taint left once Ready (not-ready/unreachable go away).
  [[ -z "$(kubectl get node "$NODE" -o jsonpath='{.spec.taints}')" ]]
}

check_images() {
  "${CTR[@]}" images ls
  # Listed first, grepped after: `ctr ... | grep -q` fails now and then under pipefail
  # (grep quits at the first match, ctr dies of SIGPIPE: exit 141).
  local refs
  refs=$("${CTR[@]}" images ls -q)
  grep -qx registry.k8s.io/pause:3.10.2 <<<"$refs"
  grep -qx "$KSS_IMAGE" <<<"$refs"
  # The image config as the Dockerfile's kss stage says.
  local cfg
  cfg=$(tar -xOf "$KSS_E2E_IMAGES/kss.tar" "$(tar -xOf "$KSS_E2E_IMAGES/kss.tar" manifest.json | jq -r '.[0].Config')")
  echo "$cfg" | jq .config
  [[ $(jq -r .config.User <<<"$cfg") == 65532:65532 ]]
  [[ $(jq -c .config.Entrypoint <<<"$cfg") == '["/usr/local/bin/kss"]' ]]
  [[ $(jq -c .config.Cmd <<<"$cfg") == '["serve"]' ]]
  [[ $(jq -r '.config.Labels["org.opencontainers.image.title"]' <<<"$cfg") == kss ]]
  jq -e '.config.Env | index("KSS_DATA_DIR=/var/lib/kss")' <<<"$cfg" >/dev/null
  jq -e '.config.ExposedPorts["7443/tcp"]' <<<"$cfg" >/dev/null
}

check_pause_pod() {
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
  until_ok 30 kubectl -n "$NS" get serviceaccount default
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: pause
spec:
  containers:
  - name: pause
    image: registry.k8s.io/pause:3.10.2
    imagePullPolicy: Never
EOF
  kubectl -n "$NS" wait --for=condition=Ready pod/pause --timeout=90s || {
    kubectl -n "$NS" describe pod pause
    return 1
  }
  kubectl -n "$NS" get pod pause -o wide
  local ip
  ip=$(kubectl -n "$NS" get pod pause -o jsonpath='{.status.podIP}')
  [[ $ip == 10.244.* ]]
  local pid
  pid=$(container_pid pause pause)
  echo "pause pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
  grep -E '^Uid:' "/proc/$pid/status"
  grep -qE '^Uid:\s+65535\s' "/proc/$pid/status"
}

check_kss_pod() {
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: kss
  labels:
    app.kubernetes.io/name: kss
spec:
  securityContext:
    runAsNonRoot: true
    seccompProfile:
      type: RuntimeDefault
  containers:
  - name: kss
    image: $KSS_IMAGE
    imagePullPolicy: Never
    args:
    - serve
    - --dev
    - --listen=\$(POD_IP):8443
    - --health-listen=\$(POD_IP):8444
    - --metrics-listen=\$(POD_IP):9464
    env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    ports:
    - {name: grpc, containerPort: 8443}
    - {name: health, containerPort: 8444}
    - {name: metrics, containerPort: 9464}
    volumeMounts:
    - {name: data, mountPath: /var/lib/kss}
    startupProbe:
      grpc: {port: 8444, service: ""}
      periodSeconds: 2
      failureThreshold: 30
    readinessProbe:
      grpc: {port: 8444, service: kss.v1.KeyServer}
      periodSeconds: 2
      failureThreshold: 2
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: [ALL]
  volumes:
  - name: data
    emptyDir: {}
EOF
  kubectl -n "$NS" wait --for=condition=Ready pod/kss --timeout=120s || {
    kubectl -n "$NS" describe pod kss
    kubectl -n "$NS" logs kss --tail=40 || true
    return 1
  }
  kubectl -n "$NS" get pod kss -o wide
  kubectl -n "$NS" logs kss --tail=5
  local pid
  pid=$(container_pid kss kss)
  echo "kss pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
  grep -E '^(Uid|Gid):' "/proc/$pid/status"
  grep -qE '^Uid:\s+65532\s+65532\s+65532\s+65532' "/proc/$pid/status"
  grep -qE '^Gid:\s+65532\s' "/proc/$pid/status"
  # The container's root mount is read-only; its data dir is not.
  local rootopts dataopts
  rootopts=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo")
  dataopts=$(awk '$5 == "/var/lib/kss" {print $6}' "/proc/$pid/mountinfo")
  echo "root mount: $rootopts; /var/lib/kss: $dataopts"
  [[ $rootopts == ro,* || $rootopts == ro ]]
  [[ $dataopts == rw,* || $dataopts == rw ]]
  # Its metrics endpoint answers on the pod IP, from the node.
  local ip
  ip=$(kubectl -n "$NS" get pod kss -o jsonpath='{.status.podIP}')
  local metrics
  metrics=$(curl -fsS "http://$ip:9464/metrics")
  grep -m3 '^kss_' <<<"$metrics"
}

check_service_dns() {
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kss
spec:
  selector:
    app.kubernetes.io/name: kss
  ports:
  - {name: metrics, port: 80, targetPort: 9464}
EOF
  local cip name=kss.$NS.svc.cluster.local
  cip=$(kubectl -n "$NS" get service kss -o jsonpath='{.spec.clusterIP}')
  echo "ClusterIP $cip"
  # CoreDNS (on the node address, the pods' nameserver) answers for the Service.
  cat >"$WORK/dnsq.py" <<'PY'
import socket, sys
name, server, want = sys.argv[1:4]
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(q, (server, 53))
r = s.recv(512)
print(name, "->", socket.inet_ntoa(r[-4:]))
sys.exit(0 if r[-4:] == socket.inet_aton(want) else 1)
PY
  until_ok 30 python3 "$WORK/dnsq.py" "$name" "$NODE_IP" "$cip"
  # kube-proxy's rules take the ClusterIP to the pod (from the node's own namespace).
  until_ok 30 curl -fsS -o /dev/null "http://$cip/metrics"
  iptables-save -t nat | grep -c KUBE-SVC || true
}

check "kubelet registered node $NODE, Ready, v1.36.3 on containerd 2.4.2" check_node
check "pause and kss images imported; kss image config as in the Dockerfile" check_images
check "a pod of the pause image runs (pod IP on cni0, uid 65535)" check_pause_pod
check "kss pod from the kss image Ready via its gRPC probe, uid 65532, read-only root" check_kss_pod
check "Service name resolves via CoreDNS, ClusterIP reaches the pod via kube-proxy" check_service_dns

echo "node-smoke: $PASSED passed, $FAILED failed"
((FAILED == 0))
