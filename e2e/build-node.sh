#!/usr/bin/env bash
# Build the binaries of the real-node e2e path into a cache outside the repository
# and print the bin dir on the last line of stdout (like build-tools.sh):
#
#   kubelet, kube-proxy        k8s.io/kubernetes (tools/kubelet: the same version as
#                              tools/kubernetes, checked here)
#   containerd, containerd-shim-runc-v2, ctr
#                              github.com/containerd/containerd/v2 (tools/containerd)
#   cni/{bridge,host-local,loopback,portmap}
#                              github.com/containernetworking/plugins (tools/cni)
#   coredns                    github.com/coredns/coredns (tools/coredns)
#   crane                      github.com/google/go-containerregistry (tools/crane)
#   pause                      build/pause/linux/pause.c of the k8s.io/kubernetes
#                              module, compiled static with the host's gcc
#
# runc, iptables and conntrack come from Debian's packages (installed with apt-get
# when missing: runc 1.1.5, iptables 1.8.9 on Debian 12), not from this cache.
#
#   e2e/build-node.sh             # build what is missing, print bin dir
#   NODE_BIN=$(e2e/build-node.sh | tail -n 1)
#
# Environment:
#   KSS_E2E_CACHE   cache root (default: $HOME/.cache/kss-e2e)
#
# The cache key is a hash of RECIPE, `go version`, the gcc version and the go.mod/go.sum
# files of tools/{kubelet,containerd,cni,coredns,crane}: a new pin or a new recipe
# selects a fresh directory (node-<kubernetes version>-<hash>); old ones are deleted by
# hand.
set -euo pipefail

# Bump when the build flags below change, to force a rebuild.
RECIPE=1

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_DIR="$E2E_DIR/tools"
CACHE_ROOT=${KSS_E2E_CACHE:-$HOME/.cache/kss-e2e}

export CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
export GOTOOLCHAIN=local
export GOWORK=off

log() { printf '[build-node] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go not found in PATH"; exit 1; }

# Debian packages the node needs at run time.
need_pkgs=()
command -v runc >/dev/null || need_pkgs+=(runc)
command -v iptables >/dev/null || need_pkgs+=(iptables)
command -v conntrack >/dev/null || need_pkgs+=(conntrack)
command -v gcc >/dev/null || need_pkgs+=(gcc libc6-dev)
if ((${#need_pkgs[@]})); then
  log "installing Debian packages: ${need_pkgs[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

mod_version() { # <tools module dir> <module path>
  (cd "$TOOLS_DIR/$1" && go list -m -f '{{.Version}}' "$2")
}

K8S_VERSION=$(mod_version kubernetes k8s.io/kubernetes)
KUBELET_K8S_VERSION=$(mod_version kubelet k8s.io/kubernetes)
if [[ $KUBELET_K8S_VERSION != "$K8S_VERSION" ]]; then
  log "tools/kubelet pins k8s.io/kubernetes $KUBELET_K8S_VERSION but tools/kubernetes $K8S_VERSION;"
  log "copy tools/kubernetes/go.mod to tools/kubelet (module line kept) and run go mod tidy there"
  exit 1
fi
FAMILIES=(kubelet containerd cni coredns crane)

key_input() {
  printf 'recipe=%s\n' "$RECIPE"
  go version
  gcc --version | head -n 1
  local d
  for d in "${FAMILIES[@]}"; do
    printf '== %s\n' "$d"
    cat "$TOOLS_DIR/$d/go.mod" "$TOOLS_DIR/$d/go.sum"
  done
}
KEY="node-$K8S_VERSION-$(key_input | sha256sum | cut -c1-16)"
BIN_DIR="$CACHE_ROOT/$KEY/bin"
mkdir -p "$BIN_DIR/cni"

exec 9>"$CACHE_ROOT/$KEY/.lock"
if command -v flock >/dev/null; then
  flock 9
fi

# As in build-tools.sh: a build cache of its own, removed once everything is built.
export GOCACHE="$CACHE_ROOT/$KEY/go-build"

# build() and k8s_ldflags(), shared with the other build script.
source "$E2E_DIR/go-build.sh"

total_start=$SECONDS
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# kubelet, kube-proxy: stamped like the control plane (build-tools.sh), built from
# tools/kubelet (tools/kubernetes/go.sum lacks 20 sums these packages need, and adding
# them there would change build-tools.sh's key and rebuild the whole control plane).
K8S_LDFLAGS=$(k8s_ldflags "$K8S_VERSION" "$BUILD_DATE")
build kubelet kubelet k8s.io/kubernetes/cmd/kubelet "$K8S_LDFLAGS"
build kubelet kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$K8S_LDFLAGS"

# containerd: without cgo there is no btrfs snapshotter (not needed: overlayfs/native).
CTRD_VERSION=$(mod_version containerd github.com/containerd/containerd/v2)
CTRD_LDFLAGS="-s -w -X github.com/containerd/containerd/v2/version.Version=$CTRD_VERSION"
CTRD_LDFLAGS+=" -X github.com/containerd/containerd/v2/version.Revision=module"
for b in containerd containerd-shim-runc-v2 ctr; do
  build containerd "$b" "github.com/containerd/containerd/v2/cmd/$b" "$CTRD_LDFLAGS" \
    "no_btrfs no_devmapper no_zfs urfave_cli_no_docs"
done

# CNI plugins.
CNI_VERSION=$(mod_version cni github.com/containernetworking/plugins)
CNI_LDFLAGS="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_VERSION"
build cni cni/bridge github.com/containernetworking/plugins/plugins/main/bridge "$CNI_LDFLAGS"
build cni cni/loopback github.com/containernetworking/plugins/plugins/main/loopback "$CNI_LDFLAGS"
build cni cni/host-local github.com/containernetworking/plugins/plugins/ipam/host-local "$CNI_LDFLAGS"
build cni cni/portmap github.com/containernetworking/plugins/plugins/meta/portmap "$CNI_LDFLAGS"

# crane (image assembly, e2e/images.sh).
build crane crane github.com/google/go-containerregistry/cmd/crane "-s -w"

# pause: the C program the Kubernetes pause image runs, from the module's sources.
if [[ ! -x "$BIN_DIR/pause" ]]; then
  k8s_dir=$(cd "$TOOLS_DIR/kubelet" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  [[ -f "$k8s_dir/build/pause/linux/pause.c" ]] || { log "pause.c not in $k8s_dir"; exit 1; }
  # The flags of build/pause/Makefile; its TAG is the pause image's version.
  pause_tag=$(sed -n 's/^TAG ?= *//p' "$k8s_dir/build/pause/Makefile")
  log "build pause $pause_tag from $k8s_dir/build/pause/linux/pause.c ..."
  nice -n 15 gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag-$K8S_VERSION" \
    -o "$BIN_DIR/pause.tmp.$$" "$k8s_dir/build/pause/linux/pause.c"
  strip "$BIN_DIR/pause.tmp.$$"
  mv -f "$BIN_DIR/pause.tmp.$$" "$BIN_DIR/pause"
fi

# CoreDNS last: only Service names need it.
COREDNS_VERSION=$(mod_version coredns github.com/coredns/coredns)
build coredns coredns github.com/coredns/coredns "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"

rm -rf "$GOCACHE"
log "all node binaries ready in $((SECONDS - total_start)) s"
echo "$BIN_DIR"
