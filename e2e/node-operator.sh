#!/usr/bin/env bash
# The operator on the real node, from its install manifests and images:
#
#   e2e/node-e2e.sh -- e2e/node-operator.sh
#
# Applies manifests/install (CRDs, namespace, RBAC, the kss-operator Deployment running
# ghcr.io/kss-project/kss-operator:0.1.0 from images.sh), waits until the operator is
# available, then applies manifests/examples/{policy,standalone}.yaml and waits until the
# operator's StatefulSet pod kss-demo-0 (image ghcr.io/kss-project/kss:0.1.0) is Ready
# through its gRPC probes, and checks it runs as 65532 on a read-only root. Storage: no
# provisioner runs on this node, so a loop here binds each Pending claim to a hostPath
# PersistentVolume under the state dir (as e2e/src/provisioner.rs does for the kwok
# tests). PASS:/FAIL: lines and `node-operator: N passed, N failed` like node-smoke.sh.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
STATE=${KSS_E2E_STATE:-/tmp/kss-node-e2e}
NODE_BIN=$(cat "$STATE/node-bin-dir")
CTR=("$NODE_BIN/ctr" --address "$STATE/node/containerd/containerd.sock" -n k8s.io)
WORK=$(mktemp -d -t kss-node-operator.XXXXXX)
PROV_PID=
cleanup() {
  [[ -z $PROV_PID ]] || kill "$PROV_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Bind Pending claims to hostPath volumes, owned by the keyserver's user (kubelet
# applies no fsGroup to hostPath).
provisioner() {
  local ns name size dir
  while :; do
    kubectl get pvc -A -o jsonpath='{range .items[?(@.status.phase=="Pending")]}{.metadata.namespace} {.metadata.name} {.spec.resources.requests.storage}{"\n"}{end}' 2>/dev/null |
      while read -r ns name size; do
        [[ -n $name ]] || continue
        dir=$STATE/pv/$ns-$name
        mkdir -p "$dir" && chown 65532:65532 "$dir"
        kubectl apply -f - >/dev/null <<EOF || true
apiVersion: v1
kind: PersistentVolume
metadata:
  name: pv-$ns-$name
spec:
  capacity: {storage: $size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: "$(kubectl -n "$ns" get pvc "$name" -o jsonpath='{.spec.storageClassName}')"
  claimRef: {namespace: $ns, name: $name}
  hostPath: {path: $dir, type: DirectoryOrCreate}
EOF
      done
    sleep 1
  done
}

PASSED=0
FAILED=0
check() {
  local name=$1 fn=$2 out="$WORK/check-$2.log" start=$SECONDS
  (
    set -Eeuo pipefail
    trap 'echo ">>> failed (exit $?) at node-operator.sh line $LINENO: $BASH_COMMAND"' ERR
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

check_operator() {
  kubectl apply -f "$REPO_DIR/manifests/install/00-crds.yaml"
  kubectl wait --for=condition=Established crd --all --timeout=30s
  kubectl apply -f "$REPO_DIR/manifests/install/10-namespace.yaml" \
    -f "$REPO_DIR/manifests/install/20-rbac.yaml" -f "$REPO_DIR/manifests/install/30-operator.yaml"
  kubectl -n kss-system rollout status deployment/kss-operator --timeout=120s || {
    kubectl -n kss-system get pods -o wide
    kubectl -n kss-system describe pods | tail -30
    kubectl -n kss-system logs deployment/kss-operator --tail=30 || true
    return 1
  }
  kubectl -n kss-system get pods -o wide
  kubectl -n kss-system logs deployment/kss-operator --tail=5
}

check_standalone() {
  kubectl apply -f "$REPO_DIR/manifests/examples/policy.yaml" -f "$REPO_DIR/manifests/examples/standalone.yaml"
  local deadline=$((SECONDS + 180))
  until kubectl get pod kss-demo-0 >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { kubectl get keyshardcluster,statefulset,pvc,pod -o wide; kubectl -n kss-system logs deployment/kss-operator --tail=30; return 1; }
    sleep 1
  done
  kubectl wait --for=condition=Ready pod/kss-demo-0 --timeout=180s || {
    kubectl get keyshardcluster,statefulset,pvc,pv,pod -o wide
    kubectl describe pod kss-demo-0 | tail -40
    kubectl logs kss-demo-0 --tail=30 || true
    return 1
  }
  kubectl get keyshardcluster,statefulset,pvc,pod -o wide
  kubectl logs kss-demo-0 --tail=5
  local id pid
  id=$(kubectl get pod kss-demo-0 -o jsonpath='{.status.containerStatuses[?(@.name=="kss")].containerID}')
  pid=$("${CTR[@]}" tasks ls | awk -v id="${id#containerd://}" '$1 == id {print $2}')
  echo "kss-demo-0 pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
  grep -E '^(Uid|Gid):' "/proc/$pid/status"
  grep -qE '^Uid:\s+65532\s+65532\s+65532\s+65532' "/proc/$pid/status"
  local rootopts
  rootopts=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo")
  echo "root mount: $rootopts"
  [[ $rootopts == ro,* || $rootopts == ro ]]
}

provisioner &
PROV_PID=$!
check "operator Deployment from manifests/install Available on the real node" check_operator
check "operator's StatefulSet pod kss-demo-0 Ready (gRPC probes), uid 65532, read-only root" check_standalone
echo "node-operator: $PASSED passed, $FAILED failed"
((FAILED == 0))
