#!/usr/bin/env bash
# Build the pinned Kubernetes e2e tool binaries (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, etcd, etcdctl, kwok, helm)
# into a cache outside the repository and print the bin dir on the last line
# of stdout. Binaries already present in the cache are not rebuilt. Beside the bin
# dir, monitoring-crds/ holds the Prometheus Operator CRDs the Helm chart's
# monitoring objects need.
#
#   e2e/build-tools.sh            # build what is missing, print bin dir
#   BIN=$(e2e/build-tools.sh | tail -n 1)
#
# Environment:
#   KSS_E2E_CACHE   cache root (default: $HOME/.cache/kss-e2e)
#
# The cache key is a hash of the tools modules' go.mod/go.sum files, the Go
# version and RECIPE below, so changing a pinned version (or the build recipe)
# selects a fresh directory; old ones can be deleted by hand.
set -euo pipefail

# Bump when the build flags below change, to force a rebuild.
RECIPE=1

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_DIR="$E2E_DIR/tools"
CACHE_ROOT=${KSS_E2E_CACHE:-$HOME/.cache/kss-e2e}

export CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false"
export GOTOOLCHAIN=local
# A go.work somewhere above the repository must not change what is built.
export GOWORK=off

log() { printf '[build-tools] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go not found in PATH"; exit 1; }

mod_version() { # <tools module dir> <module path>
  (cd "$TOOLS_DIR/$1" && go list -m -f '{{.Version}}' "$2")
}

K8S_VERSION=$(mod_version kubernetes k8s.io/kubernetes)

key_input() {
  printf 'recipe=%s\n' "$RECIPE"
  go version
  local d
  for d in kubernetes etcd kwok helm; do
    printf '== %s\n' "$d"
    cat "$TOOLS_DIR/$d/go.mod" "$TOOLS_DIR/$d/go.sum"
  done
}
KEY="k8s-$K8S_VERSION-$(key_input | sha256sum | cut -c1-16)"
BIN_DIR="$CACHE_ROOT/$KEY/bin"
mkdir -p "$BIN_DIR"

# Serialise concurrent runs for the same key (flock is in util-linux).
exec 9>"$CACHE_ROOT/$KEY/.lock"
if command -v flock >/dev/null; then
  flock 9
fi

# The Go build cache these builds fill (about 4.5 GB from cold) is of no use once the
# binaries are cached: it is kept beside them, apart from the user's own cache, and
# removed when every tool is built (kept after a failure, to resume from).
export GOCACHE="$CACHE_ROOT/$KEY/go-build"

# build() and k8s_ldflags(), shared with the other build script.
source "$E2E_DIR/go-build.sh"

total_start=$SECONDS
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Kubernetes: stamp both version packages, or the binaries report v0.0.0.
K8S_LDFLAGS=$(k8s_ldflags "$K8S_VERSION" "$BUILD_DATE")
for name in kubectl kube-scheduler kube-controller-manager kube-apiserver; do
  build kubernetes "$name" "k8s.io/kubernetes/cmd/$name" "$K8S_LDFLAGS"
done

# etcd: the version string is a constant in go.etcd.io/etcd/api/v3/version.
ETCD_VERSION=$(mod_version etcd go.etcd.io/etcd/server/v3)
ETCD_LDFLAGS="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
build etcd etcd go.etcd.io/etcd/server/v3 "$ETCD_LDFLAGS"
build etcd etcdctl go.etcd.io/etcd/etcdctl/v3 "$ETCD_LDFLAGS"

# kwok
KWOK_VERSION=$(mod_version kwok sigs.k8s.io/kwok)
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"

# helm: like its Makefile, also stamp the default Kubernetes version (client-go
# v0.X -> 1.X) used by `helm template` and `helm lint`.
HELM_VERSION=$(mod_version helm helm.sh/helm/v3)
helm_cg=$(mod_version helm k8s.io/client-go)
helm_cg=${helm_cg#v}
helm_kmajor=$(( ${helm_cg%%.*} + 1 ))
helm_kminor=${helm_cg#*.}; helm_kminor=${helm_kminor%%.*}
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  HELM_LDFLAGS+=" -X $p.k8sVersionMajor=$helm_kmajor -X $p.k8sVersionMinor=$helm_kminor"
done
build helm helm helm.sh/helm/v3/cmd/helm "$HELM_LDFLAGS"

# The Prometheus Operator's CRDs that the Helm chart's monitoring objects need
# (ServiceMonitor, PodMonitor, PrometheusRule), taken from its module on the Go module
# proxy (checked against the checksum database like every module here), so that the e2e
# tests can have the API server validate those objects. Kept in <key>/monitoring-crds.
# The module's hash is pinned too (what `go mod download -json` reports as .Sum).
PROMETHEUS_OPERATOR_VERSION=v0.85.0
PROMETHEUS_OPERATOR_SUM=h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=
MONITORING_DIR="$CACHE_ROOT/$KEY/monitoring-crds"
if [[ "$(cat "$MONITORING_DIR/version" 2>/dev/null)" != "$PROMETHEUS_OPERATOR_VERSION" ]]; then
  log "fetch the Prometheus Operator CRDs ($PROMETHEUS_OPERATOR_VERSION) ..."
  download=$(cd "$(mktemp -d)" && go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  module_dir=$(jq -r '.Dir // empty' <<<"$download")
  module_sum=$(jq -r '.Sum // empty' <<<"$download")
  if [[ -z "$module_dir" || "$module_sum" != "$PROMETHEUS_OPERATOR_SUM" ]]; then
    log "FAILED to download the Prometheus Operator module (sum ${module_sum:-none}, want $PROMETHEUS_OPERATOR_SUM)"
    exit 1
  fi
  rm -rf "$MONITORING_DIR" && mkdir -p "$MONITORING_DIR"
  for kind in servicemonitors podmonitors prometheusrules; do
    cp "$module_dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$MONITORING_DIR/"
  done
  chmod 644 "$MONITORING_DIR"/*.yaml
  echo "$PROMETHEUS_OPERATOR_VERSION" >"$MONITORING_DIR/version"
fi

rm -rf "$GOCACHE"
log "all tools ready in $((SECONDS - total_start)) s"
echo "$BIN_DIR"
