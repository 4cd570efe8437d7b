#!/usr/bin/env bash
# Run a command against the e2e control plane with a REAL node (containerd, runc,
# kubelet, kube-proxy, CoreDNS) instead of kwok, inside namespaces of its own:
#
#   e2e/node-e2e.sh                 # the checks of e2e/node-smoke.sh
#   e2e/node-e2e.sh -- CMD ARGS...  # CMD with KUBECONFIG/PATH set, then down
#   e2e/node-e2e.sh --shell         # an interactive shell in there (for debugging)
#
# Outside: builds (or finds in the cache) the tools, the node binaries and the images
# (build-tools.sh, build-node.sh, images.sh), creates the cgroup subtree
# $KSS_E2E_CGROUP_ROOT (default /kss-node-e2e) in every v1 hierarchy, then re-runs
# itself under `unshare --net --mount --pid --fork --mount-proc --kill-child`:
#   - network: nothing but lo, a dummy interface with the node's address and what the
#     node makes (cni0, veths, kube-proxy's iptables rules) — the host is untouched;
#   - mounts: private; a fresh sysfs (so that /sys/class/net is this namespace's, which
#     the bridge plugin needs) with the cgroup hierarchies mounted again on it, and
#     tmpfs on /run, /var/lib/cni and /var/log/containers (paths containerd's shims,
#     libcni and kubelet use whatever their configs say); overlayfs and kubelet's
#     volume mounts vanish with the namespace;
#   - PIDs: when this script's inner half ends, for whatever reason, the kernel kills
#     every process left in the namespace (shims and containers included).
# Inside: the namespace's processes join the cgroup <root>/node, then
# `control-plane.sh up --node`, the command, `control-plane.sh down`. Back outside, the
# cgroups under <root> are removed and so are the empty mount-point directories this
# script created on the host (/var/lib/cni, /var/log/containers, if they were absent).
#
# Environment: KSS_E2E_STATE (default /tmp/kss-node-e2e), KSS_E2E_CACHE,
# KSS_E2E_CGROUP_ROOT, KSS_BIN_DIR (kss binaries for the images, default
# target/release), KSS_E2E_NODE_IP, KSS_E2E_POD_SUBNET.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export KSS_E2E_STATE=${KSS_E2E_STATE:-/tmp/kss-node-e2e}
export KSS_E2E_CGROUP_ROOT=${KSS_E2E_CGROUP_ROOT:-/kss-node-e2e}
export KSS_E2E_NODE=real
CGROUP_CONTROLLERS=(cpu cpuacct cpuset memory devices freezer blkio pids systemd)
# runc also mirrors the pods' cgroups into the (controller-less) cgroup2 hierarchy.
CGROUP_CLEANUP=("${CGROUP_CONTROLLERS[@]}" unified)
HOST_MOUNTPOINTS=(/var/lib/cni /var/log/containers)

log() { printf '[node-e2e] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- inside
if [[ ${1:-} == __inside ]]; then
  shift
  c=
  for c in "${CGROUP_CONTROLLERS[@]}"; do
    [[ -d /sys/fs/cgroup/$c$KSS_E2E_CGROUP_ROOT/node ]] && echo $$ >"/sys/fs/cgroup/$c$KSS_E2E_CGROUP_ROOT/node/cgroup.procs"
  done
  # A sysfs of this network namespace, with the cgroup hierarchies as the host has them.
  cgmounts=$(awk '$2 ~ "^/sys/fs/cgroup/" {print $3, $2, $4}' /proc/self/mounts)
  mount -t sysfs sysfs /sys
  mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
  while read -r fstype dir opts; do
    mkdir -p "$dir"
    case $fstype in
      cgroup) mount -t cgroup -o "$(sed -E 's/(^|,)(rw|ro|relatime|nosuid|nodev|noexec)(,|$)/\1/g; s/,,+/,/g; s/^,|,$//g' <<<"$opts")" cgroup "$dir" ;;
      cgroup2) mount -t cgroup2 cgroup2 "$dir" ;;
    esac
  done <<<"$cgmounts"
  mount -t tmpfs -o mode=755 tmpfs /run
  for d in "${HOST_MOUNTPOINTS[@]}"; do mount -t tmpfs -o mode=755 tmpfs "$d"; done
  ip link set lo up
  export KSS_E2E_NODE_NS=1

  CP="$E2E_DIR/control-plane.sh"
  trap '"$CP" down || true' EXIT
  "$CP" up --node
  eval "$("$CP" env)"
  export PATH="$(cat "$KSS_E2E_STATE/node-bin-dir"):$PATH"
  case ${1:-} in
    --shell) bash -i ;;
    --) shift; "$@" ;;
    *) "$E2E_DIR/node-smoke.sh" ;;
  esac
  exit $?
fi

# ---------------------------------------------------------------- outside
[[ $(id -u) == 0 ]] || die "needs root (namespaces, mounts, cgroups)"
for c in unshare ip mountpoint; do command -v "$c" >/dev/null || die "$c not found"; done

# One run at a time per state dir and cgroup root (a second one waits).
mkdir -p "$(dirname "$KSS_E2E_STATE")"
exec 8>"$KSS_E2E_STATE.lock"
if ! flock -n 8; then
  log "another node-e2e.sh holds $KSS_E2E_STATE.lock; waiting"
  flock 8
fi

log "building / locating tools"
KSS_E2E_BIN=$("$E2E_DIR/build-tools.sh" | tail -n 1)
KSS_E2E_NODE_BIN=$("$E2E_DIR/build-node.sh" | tail -n 1)
export KSS_E2E_BIN KSS_E2E_NODE_BIN
export KSS_E2E_IMAGES=${KSS_E2E_IMAGES:-$KSS_E2E_STATE-images}
"$E2E_DIR/images.sh" "$KSS_E2E_IMAGES" >/dev/null

created_dirs=()
cleanup() {
  local rc=$? c d
  for c in "${CGROUP_CLEANUP[@]}"; do
    d=/sys/fs/cgroup/$c$KSS_E2E_CGROUP_ROOT
    [[ -d $d ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ ! -d $d ]] || log "WARNING: cgroup $d still in use: $(find "$d" -name cgroup.procs -exec cat {} + | tr '\n' ' ')"
  done
  for d in "${created_dirs[@]}"; do rmdir "$d" 2>/dev/null || log "WARNING: could not remove $d"; done
  exit "$rc"
}
trap cleanup EXIT

for c in "${CGROUP_CONTROLLERS[@]}"; do
  [[ -d /sys/fs/cgroup/$c ]] || continue
  d=/sys/fs/cgroup/$c$KSS_E2E_CGROUP_ROOT
  mkdir -p "$d/node"
  if [[ $c == cpuset ]]; then
    for f in cpuset.cpus cpuset.mems; do
      cat "/sys/fs/cgroup/cpuset/$f" >"$d/$f"
      cat "/sys/fs/cgroup/cpuset/$f" >"$d/node/$f"
    done
  fi
done
for d in "${HOST_MOUNTPOINTS[@]}"; do
  if [[ ! -e $d ]]; then
    mkdir -p "$d"
    created_dirs+=("$d")
  fi
done

log "entering new network, mount and PID namespaces"
set +e
unshare --net --mount --pid --fork --mount-proc --propagation private --kill-child \
  "$0" __inside "$@"
rc=$?
set -e
log "namespaces gone (exit $rc)"
exit "$rc"
