#!/usr/bin/env bash
# Smoke test of the e2e control plane: brings it up (and down on exit) and
# checks that the pieces the kss operator tests rely on really work. Prints a
# PASS/FAIL line per check and exits non-zero if any check failed.
#
#   e2e/smoke.sh
#
# Environment: KSS_E2E_STATE (default here: /tmp/kss-e2e-smoke, so a control
# plane you run by hand in /tmp/kss-e2e is left alone), KSS_E2E_CACHE.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export KSS_E2E_STATE=${KSS_E2E_STATE:-/tmp/kss-e2e-smoke}
CP="$E2E_DIR/control-plane.sh"
NS=kss-smoke
NODE=kwok-node-0
export KSS_E2E_NODE_NAME=$NODE

log() { printf '[smoke] %s\n' "$*" >&2; }

WORK=$(mktemp -d -t kss-e2e-smoke.XXXXXX)
cleanup_work() { rm -rf "$WORK"; }
trap cleanup_work EXIT

log "building / locating tools"
KSS_E2E_BIN=$("$E2E_DIR/build-tools.sh" | tail -n 1)
export KSS_E2E_BIN

# Install the test CRD from the pre-controller-manager hook, so that the
# garbage collector knows the kind from its start (see control-plane.sh).
cat >"$WORK/crd.yaml" <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kss.example
spec:
  group: smoke.kss.example
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size:
                type: string
                enum: [small, large]
              replicas:
                type: integer
                minimum: 1
                maximum: 5
          status:
            type: object
            properties:
              phase:
                type: string
EOF
cat >"$WORK/pre-cm-hook.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
kubectl apply -f "$WORK/crd.yaml"
kubectl wait --for=condition=Established crd/widgets.smoke.kss.example --timeout=30s
touch "$WORK/hook-ran"
EOF
chmod +x "$WORK/pre-cm-hook.sh"
export KSS_E2E_PRE_CM_HOOK="$WORK/pre-cm-hook.sh"

log "bringing the control plane up"
up_start=$SECONDS
"$CP" up # cleans up after itself on failure
trap '"$CP" down || true; cleanup_work' EXIT
UP_SECONDS=$((SECONDS - up_start))
eval "$("$CP" env)"

# ---------------------------------------------------------------- helpers

PASSED=0
FAILED=0

# check <name> <function>: run the function in a subshell (so `set -e` works
# inside it), its output to a log shown only on failure.
check() {
  local name=$1 fn=$2 out="$WORK/check-$2.log" start=$SECONDS
  (
    set -Eeuo pipefail
    trap 'echo ">>> failed (exit $?) at smoke.sh line $LINENO: $BASH_COMMAND"' ERR
    "$fn"
  ) >"$out" 2>&1 &
  if wait $!; then
    PASSED=$((PASSED + 1))
    printf 'PASS: %s (%ds)\n' "$name" $((SECONDS - start))
  else
    FAILED=$((FAILED + 1))
    printf 'FAIL: %s (%ds)\n' "$name" $((SECONDS - start))
    sed 's/^/    | /' "$out"
  fi
}

# until_ok <seconds> <command...>: retry every 0.5 s until it succeeds.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "timed out: $*"
      return 1
    fi
    sleep 0.5
  done
}

gone() { ! kubectl get "$@" >/dev/null 2>&1; }

# ---------------------------------------------------------------- checks

check_versions() {
  local v
  v=$(kubectl version -o json)
  echo "$v"
  grep -q '"gitVersion": "v1.36.3"' <<<"$(sed -n '/clientVersion/,/}/p' <<<"$v")"
  grep -q '"gitVersion": "v1.36.3"' <<<"$(sed -n '/serverVersion/,/}/p' <<<"$v")"
  v=$(helm version --short)
  echo "$v"
  [[ $v == v3.22.0* ]]
}

check_node_ready() {
  kubectl get node "$NODE" -o wide
  [[ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
  # No taint, so ordinary pods schedule onto it.
  [[ -z "$(kubectl get node "$NODE" -o jsonpath='{.spec.taints}')" ]]
}

check_namespace_sa() {
  kubectl create namespace "$NS"
  until_ok 30 kubectl -n "$NS" get serviceaccount default
}

check_crd() {
  [[ -f "$WORK/hook-ran" ]] # installed by the pre-controller-manager hook
  kubectl get crd widgets.smoke.kss.example
  kubectl -n "$NS" apply -f - <<'EOF'
apiVersion: smoke.kss.example/v1
kind: Widget
metadata:
  name: good
spec:
  size: small
  replicas: 2
EOF
  [[ "$(kubectl -n "$NS" get widget good -o jsonpath='{.spec.size}')" == small ]]

  # Invalid enum value and out-of-range integer: the API server must refuse it.
  local err rc=0
  err=$(kubectl -n "$NS" create -f - 2>&1 <<'EOF'
apiVersion: smoke.kss.example/v1
kind: Widget
metadata:
  name: bad
spec:
  size: huge
  replicas: 9
EOF
  ) || rc=$?
  echo "create bad widget: rc=$rc: $err"
  ((rc != 0))
  grep -q 'Unsupported value: "huge"' <<<"$err"
  grep -q 'spec.replicas' <<<"$err"
  gone -n "$NS" widget bad

  # Missing required field is refused too.
  rc=0
  err=$(kubectl -n "$NS" create -f - 2>&1 <<'EOF'
apiVersion: smoke.kss.example/v1
kind: Widget
metadata:
  name: bad2
spec: {}
EOF
  ) || rc=$?
  echo "create widget without size: rc=$rc: $err"
  ((rc != 0))
  grep -q 'spec.size: Required value' <<<"$err"

  # Status subresource: the main resource ignores status, /status sets it.
  kubectl -n "$NS" patch widget good --type=merge -p '{"status":{"phase":"Ignored"}}'
  [[ -z "$(kubectl -n "$NS" get widget good -o jsonpath='{.status.phase}')" ]]
  kubectl -n "$NS" patch widget good --subresource=status --type=merge -p '{"status":{"phase":"Ready"}}'
  [[ "$(kubectl -n "$NS" get widget good -o jsonpath='{.status.phase}')" == Ready ]]
}

check_statefulset() {
  kubectl -n "$NS" apply -f - <<'EOF'
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: registry.k8s.io/pause:3.10
EOF
  kubectl -n "$NS" rollout status statefulset/web --timeout=60s
  kubectl -n "$NS" get pods -l app=web -o wide
  local phases nodes
  phases=$(kubectl -n "$NS" get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name}={.status.phase} {end}')
  nodes=$(kubectl -n "$NS" get pods -l app=web -o jsonpath='{range .items[*]}{.spec.nodeName} {end}')
  [[ $phases == "web-0=Running web-1=Running " ]]
  [[ $nodes == "$NODE $NODE " ]]
  [[ "$(kubectl -n "$NS" get statefulset web -o jsonpath='{.status.readyReplicas}')" == 2 ]]
}

# owner_ref <kind> <apiVersion> <name>: print an ownerReferences JSON list.
owner_ref() {
  local uid
  uid=$(kubectl -n "$NS" get "$1" "$3" -o jsonpath='{.metadata.uid}')
  [[ -n $uid ]]
  printf '[{"apiVersion":"%s","kind":"%s","name":"%s","uid":"%s"}]' "$2" "$1" "$3" "$uid"
}

check_gc_builtin() {
  kubectl -n "$NS" create configmap gc-owner --from-literal=k=v
  kubectl -n "$NS" create configmap gc-dependent --from-literal=k=v
  kubectl -n "$NS" patch configmap gc-dependent --type=merge \
    -p "{\"metadata\":{\"ownerReferences\":$(owner_ref ConfigMap v1 gc-owner)}}"
  kubectl -n "$NS" delete configmap gc-owner
  until_ok 60 gone -n "$NS" configmap gc-dependent
}

check_gc_custom_owner() {
  kubectl -n "$NS" apply -f - <<'EOF'
apiVersion: smoke.kss.example/v1
kind: Widget
metadata:
  name: gc-owner
spec:
  size: large
EOF
  kubectl -n "$NS" create secret generic gc-widget-dependent --from-literal=k=v
  kubectl -n "$NS" patch secret gc-widget-dependent --type=merge \
    -p "{\"metadata\":{\"ownerReferences\":$(owner_ref Widget smoke.kss.example/v1 gc-owner)}}"
  # Foreground deletion: the owner stays until the dependent is gone.
  kubectl -n "$NS" delete widget gc-owner --cascade=foreground --timeout=60s
  until_ok 20 gone -n "$NS" secret gc-widget-dependent
}

check_rbac() {
  # A ServiceAccount without any Role must be denied.
  local ans
  ans=$(kubectl auth can-i create pods -n "$NS" --as="system:serviceaccount:$NS:default" || true)
  echo "can-i create pods as $NS:default: $ans"
  [[ $ans == no ]]
}

check_helm() {
  export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
  local chart="$WORK/chart"
  mkdir -p "$chart/templates"
  cat >"$chart/Chart.yaml" <<'EOF'
apiVersion: v2
name: smoke
version: 0.1.0
kubeVersion: ">=1.30.0-0"
EOF
  cat >"$chart/values.yaml" <<'EOF'
greeting: hello
replicas: 1
EOF
  cat >"$chart/templates/configmap.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  greeting: {{ .Values.greeting | quote }}
  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
EOF
  cat >"$chart/templates/deployment.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-app
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels:
      app: {{ .Release.Name }}-app
  template:
    metadata:
      labels:
        app: {{ .Release.Name }}-app
    spec:
      containers:
      - name: app
        image: registry.k8s.io/pause:3.10
EOF
  local out
  out=$(helm template demo "$chart" --set greeting=hi)
  echo "$out"
  grep -q 'greeting: "hi"' <<<"$out"
  grep -q 'name: demo-app' <<<"$out"

  helm install demo "$chart" -n "$NS" --wait --timeout 60s
  helm list -n "$NS"
  [[ "$(helm status demo -n "$NS" -o json | grep -o '"status":"[a-z]*"' | head -n 1)" == '"status":"deployed"' ]]
  [[ "$(kubectl -n "$NS" get configmap demo-config -o jsonpath='{.data.greeting}')" == hello ]]
  [[ "$(kubectl -n "$NS" get configmap demo-config -o jsonpath='{.data.kubeVersion}')" == v1.36.3 ]]
  [[ "$(kubectl -n "$NS" get deployment demo-app -o jsonpath='{.status.readyReplicas}')" == 1 ]]
  helm uninstall demo -n "$NS" --wait --timeout 60s
  until_ok 30 gone -n "$NS" deployment demo-app
}

check "tool versions (kubectl/apiserver v1.36.3, helm v3.22.0)" check_versions
check "kwok node $NODE Ready and untainted" check_node_ready
check "namespace gets its default ServiceAccount" check_namespace_sa
check "CRD (from pre-CM hook): valid object accepted, invalid rejected, status subresource" check_crd
check "StatefulSet with 2 replicas: 2 pods Running on the kwok node" check_statefulset
check "garbage collection: deleting a ConfigMap owner removes its dependent" check_gc_builtin
check "garbage collection: deleting a custom-resource owner removes its dependent" check_gc_custom_owner
check "RBAC: ServiceAccount without a Role is denied" check_rbac
check "helm template + helm install/uninstall of a tiny chart" check_helm

log "control plane came up in ${UP_SECONDS}s"
echo "smoke: $PASSED passed, $FAILED failed"
((FAILED == 0))
