# shellcheck shell=bash
# The real node of the e2e control plane (KSS_E2E_NODE=real or `control-plane.sh up
# --node`): containerd 2.x with Debian's runc, the CNI plugins (bridge, host-local,
# loopback, portmap), kubelet, kube-proxy (iptables mode) and CoreDNS, all built by
# build-node.sh. Sourced by control-plane.sh; see e2e/README.md, "Real node".
#
# It changes the network (a dummy interface, a bridge, veths, iptables rules), mounts
# (overlayfs, tmpfs) and cgroups, so it runs only in a network namespace of its own
# with nothing but lo in it (e2e/node-e2e.sh makes one, with a mount and a PID
# namespace too) and creates cgroups only under $CGROUP_ROOT (default /kss-node-e2e).
#
# Variables (all optional):
#   KSS_E2E_NODE_BIN     node bin dir (default: output of build-node.sh)
#   KSS_E2E_NODE_IP      the node's address, on lo (default 10.200.0.1)
#   KSS_E2E_POD_SUBNET   the pods' subnet on bridge cni0 (default 10.244.0.0/24)
#   KSS_E2E_CGROUP_ROOT  kubelet's cgroupRoot (default /kss-node-e2e)

NODE_IP=${KSS_E2E_NODE_IP:-10.200.0.1}
POD_SUBNET=${KSS_E2E_POD_SUBNET:-10.244.0.0/24}
CGROUP_ROOT=${KSS_E2E_CGROUP_ROOT:-/kss-node-e2e}
# The sandbox image containerd runs for every pod (built by e2e/images.sh).
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
CGROUP_CONTROLLERS=(cpu cpuacct cpuset memory devices freezer blkio pids systemd)

node_bin_dir() {
  if [[ -n ${KSS_E2E_NODE_BIN:-} ]]; then
    echo "$KSS_E2E_NODE_BIN"
  elif [[ -f "$STATE/node-bin-dir" ]]; then
    cat "$STATE/node-bin-dir"
  else
    "$E2E_DIR/build-node.sh" | tail -n 1
  fi
}

# The node may only touch a network namespace that holds nothing but what it made.
node_check_netns() {
  local others
  others=$(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' |
    grep -vxE "lo|cni0|veth[0-9a-f]+" || true)
  [[ -z $others ]] || die "KSS_E2E_NODE=real needs a network namespace of its own (run it through e2e/node-e2e.sh); this one has: $(echo $others)"
}

node_preflight() {
  node_check_netns
  local c
  for c in runc iptables ip mount; do
    command -v "$c" >/dev/null || die "$c not found (build-node.sh installs runc and iptables)"
  done
  NODE_BIN=$(node_bin_dir)
  for c in kubelet kube-proxy containerd containerd-shim-runc-v2 ctr coredns crane pause \
    cni/bridge cni/host-local cni/loopback cni/portmap; do
    [[ -x "$NODE_BIN/$c" ]] || die "$NODE_BIN/$c missing; run e2e/build-node.sh"
  done
  echo "$NODE_BIN" >"$STATE/node-bin-dir"
  # containerd's shims keep their sockets in /run/containerd/s, whatever its config
  # says; libcni caches results in /var/lib/cni; kubelet links container logs in
  # /var/log/containers. node-e2e.sh mounts a tmpfs on /run and on the other two in
  # its own mount namespace, and says so with KSS_E2E_NODE_NS=1.
  [[ ${KSS_E2E_NODE_NS:-} == 1 ]] || die "KSS_E2E_NODE=real runs only inside e2e/node-e2e.sh's namespaces"
  for c in /var/lib/cni /var/log/containers; do
    mountpoint -q "$c" || die "$c is not a mount point of its own; run through e2e/node-e2e.sh"
  done
}

node_net_up() {
  ip link set lo up
  # The node's address lives on lo (this kernel has no dummy interfaces: `ip link add
  # type dummy` says "Unknown device type"); pods reach it through their gateway.
  if ! ip -o addr show dev lo | grep -q " $NODE_IP/"; then
    ip addr add "$NODE_IP/32" dev lo
  fi
  # A fresh network namespace has no default route: a connection from the node to a
  # ClusterIP would fail with "Network is unreachable" before kube-proxy's OUTPUT DNAT
  # is even looked at. The Service range gets a route of its own (the DNAT then
  # re-routes to the pod through cni0).
  ip route replace 10.96.0.0/16 dev lo src "$NODE_IP"
  # Pods reach Services through kube-proxy's DNAT on this (namespaced) host.
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
}

# cgroups: kubelet wants its cgroupRoot to exist in every v1 hierarchy; cpuset ones
# start empty and must be given the parent's CPUs and memory nodes.
node_cgroups_up() {
  local c dir
  for c in "${CGROUP_CONTROLLERS[@]}"; do
    dir=/sys/fs/cgroup/$c$CGROUP_ROOT
    [[ -d /sys/fs/cgroup/$c ]] || continue
    mkdir -p "$dir"
    if [[ $c == cpuset ]]; then
      cat "/sys/fs/cgroup/cpuset/cpuset.cpus" >"$dir/cpuset.cpus"
      cat "/sys/fs/cgroup/cpuset/cpuset.mems" >"$dir/cpuset.mems"
    fi
  done
}

node_gen_pki() {
  local client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  new_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" ca "$client"
  new_cert kubelet-serving "/CN=$NODE_NAME" ca "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME"
  new_cert kube-proxy "/CN=system:kube-proxy" ca "$client"
  # CoreDNS only reads Services, EndpointSlices, Namespaces and Pods; system:masters
  # keeps this harness free of its RBAC objects.
  new_cert coredns "/O=system:masters/CN=coredns" ca "$client"
  new_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" ca "$client"
  chmod 600 "$PKI"/*.key
}

node_write_configs() {
  local d=$STATE/node
  mkdir -p "$d" "$d/cni/net.d" "$d/containerd" "$d/kubelet" "$d/pod-logs" "$d/cni/ipam"
  write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet
  write_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
  write_kubeconfig "$STATE/coredns.kubeconfig" coredns

  # containerd 2.x (config version 3): every path under the state dir, the CRI plugin
  # with runc from Debian, cgroupfs (no systemd here), the CNI plugins of the cache,
  # and the pause image built by images.sh as the sandbox image (never pulled: no
  # registry is reachable).
  CONTAINERD_SOCK=$d/containerd/containerd.sock
  cat >"$d/containerd/config.toml" <<EOF
version = 3
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.blockfile"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$d/containerd/containerd.sock.ttrpc"

[debug]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$d/containerd/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  # This sandbox has no CAP_SYS_RESOURCE: lowering oom_score_adj (kubelet asks -998
  # for pause containers) fails in runc ("failed to update /proc/self/oom_score_adj:
  # Permission denied", seen by containerd as "can't get final child's PID from pipe:
  # EOF"); keep every container at or above containerd's own value.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "${KSS_E2E_RUNC:-$(command -v runc)}"
        Root = "/run/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$NODE_BIN/cni"]
    conf_dir = "$d/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  [plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]
    tls_cert_file = ""
EOF

  cat >"$d/cni/net.d/10-kss-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kss-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  # kubelet: cgroup v1 allowed explicitly, cgroupfs under $CGROUP_ROOT, client-cert
  # authentication only (the apiserver's kubelet client is system:masters), the
  # serving cert from our CA, logs and state under the state dir, CoreDNS as the
  # cluster DNS, no swap check, eviction thresholds low enough for a shared disk.
  printf 'nameserver %s\nsearch cluster.local\n' "$NODE_IP" >"$d/kubelet/resolv.conf"
  cat >"$d/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $d/kubelet/resolv.conf
podLogsDir: $d/pod-logs
failSwapOn: false
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
maxPods: 50
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageMinimumGCAge: 24h
serializeImagePulls: false
localStorageCapacityIsolation: true
# A changed Secret reaches its pods' volumes at their next sync (default every minute);
# 10 s keeps the renewal tests short. The keyserver must not care how long it takes.
syncFrequency: 10s
EOF

  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_SUBNET
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF

  cat >"$d/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig kss-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
EOF
}

# start_node <name> <args...>: like start, for a binary of the node bin dir.
start_node() {
  local name=$1
  shift
  log "starting $name"
  "$NODE_BIN/$name" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  echo "$NODE_BIN/$name" >"$PIDS/$name.exe"
}

ctr_k8s() { "$NODE_BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

node_up() {
  free_port KUBELET_PORT
  free_port KUBELET_HEALTHZ_PORT
  free_port PROXY_HEALTHZ_PORT
  free_port PROXY_METRICS_PORT
  free_port COREDNS_HEALTH_PORT
  free_port COREDNS_READY_PORT
  cat >>"$STATE/ports.env" <<EOF
NODE_IP=$NODE_IP
POD_SUBNET=$POD_SUBNET
KUBELET_PORT=$KUBELET_PORT
KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT
PROXY_HEALTHZ_PORT=$PROXY_HEALTHZ_PORT
COREDNS_READY_PORT=$COREDNS_READY_PORT
EOF
  node_write_configs

  start_node containerd --config "$STATE/node/containerd/config.toml" --log-level info
  wait_for 60 "containerd" ctr_k8s version
  # Images: the pause image and whatever images.sh assembled (KSS_E2E_IMAGES, a dir
  # of OCI image tarballs), imported into containerd's k8s.io namespace.
  local img
  for img in "${KSS_E2E_IMAGES:-$STATE/images}"/*.tar; do
    [[ -f $img ]] || continue
    log "importing $(basename "$img") into containerd"
    ctr_k8s images import --no-unpack=false "$img" >>"$LOGS/images.log" 2>&1 ||
      die "ctr images import $img failed (see $LOGS/images.log)"
  done
  local refs
  refs=$(ctr_k8s images ls -q 2>/dev/null)
  grep -qx "$PAUSE_IMAGE" <<<"$refs" ||
    die "sandbox image $PAUSE_IMAGE not in containerd (e2e/images.sh builds it)"

  start_node kubelet \
    --config="$STATE/node/kubelet/config.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" \
    --root-dir="$STATE/node/kubelet/root" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --v=2
  start_node kube-proxy --config="$STATE/node/kube-proxy.yaml" --v=2
  start_node coredns -conf "$STATE/node/Corefile"

  wait_for 120 "node $NODE_NAME Ready (kubelet)" \
    kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  wait_for 60 "kube-proxy /healthz" curl -fsS "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
  wait_for 60 "CoreDNS /ready" curl -fsS "http://127.0.0.1:$COREDNS_READY_PORT/ready"
}

# Every process in the pods' cgroups (they are ours: kubelet made them, under
# $CGROUP_ROOT/kubepods; $CGROUP_ROOT/node holds this script), killed; then the shims, which outlive containerd otherwise.
node_kill_pods() {
  local f pid
  for f in $(find "/sys/fs/cgroup/pids$CGROUP_ROOT/kubepods" -name cgroup.procs 2>/dev/null); do
    while read -r pid; do
      [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
    done <"$f"
  done
  local shim
  shim=$(readlink -f "$(node_bin_dir)/containerd-shim-runc-v2" 2>/dev/null || true)
  [[ -n $shim ]] || return 0
  for f in /proc/[0-9]*; do
    [[ "$(readlink -f "$f/exe" 2>/dev/null)" == "$shim" ]] && kill -KILL "${f#/proc/}" 2>/dev/null || true
  done
}

# Stop the node before the control plane: CoreDNS, kube-proxy, kubelet, the pods,
# containerd.
node_down() {
  local c pid exe
  for c in coredns kube-proxy kubelet pods containerd; do
    if [[ $c == pods ]]; then
      node_kill_pods
      continue
    fi
    [[ -f "$PIDS/$c.pid" && -f "$PIDS/$c.exe" ]] || continue
    pid=$(<"$PIDS/$c.pid")
    exe=$(<"$PIDS/$c.exe")
    if is_ours "$pid" "$exe"; then
      log "stopping $c (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      wait_gone "$pid:$exe:$c"
    fi
    rm -f "$PIDS/$c.pid" "$PIDS/$c.exe"
  done
}

# Remove the cgroups under $CGROUP_ROOT, deepest first (after node_down; a cgroup
# that still holds a process stays, and is reported).
node_cgroups_down() {
  local c dir
  for c in "${CGROUP_CONTROLLERS[@]}" unified; do
    [[ -d /sys/fs/cgroup/$c$CGROUP_ROOT ]] || continue
    find "/sys/fs/cgroup/$c$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d /sys/fs/cgroup/$c$CGROUP_ROOT ]] && log "cgroup $c$CGROUP_ROOT still in use"
  done
  return 0
}
