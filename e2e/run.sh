#!/usr/bin/env bash
# Runs the e2e test suite (the kss-e2e crate's tests) against a real control plane with a
# real node: builds or locates the tools (cached), builds the workspace's binaries and
# tests as `cargo test --workspace --all-targets` does, then, through e2e/node-e2e.sh (its
# own network, mount and PID namespaces and cgroup subtree), assembles the kss and
# kss-operator images from those binaries, brings the control plane and the node
# (containerd, runc, kubelet, kube-proxy, CoreDNS) up with the CRDs of crds/ installed
# before kube-controller-manager starts, runs each kss-e2e test binary with
# --test-threads=1 (e2e/run-inside.sh), and always brings everything down again. The
# host's MariaDB (scripts/mariadb.sh) is reached from the node and its pods on the node
# address, and by the Service mysql.databases.svc, through socat forwarders.
#
#   e2e/run.sh                               # the whole suite
#   e2e/run.sh --test operator               # only e2e/tests/operator.rs (repeatable)
#   e2e/run.sh --test operator -- --nocapture standalone   # after `--`: test binary args
#
# Environment:
#   KSS_E2E_STATE   control-plane and node state dir (default /tmp/kss-e2e-run; wiped
#                   by `up`); the tests' volumes live in $KSS_E2E_STATE/volumes. Runs with
#                   the same state dir wait for each other (node-e2e.sh's lock).
#   KSS_TEST_MYSQL_URL (`eval "$(scripts/mariadb.sh env)"`): the database of the tests
#                   and their pods (required)
#   CARGO           cargo command (default cargo)
#   KSS_E2E_CACHE, KSS_E2E_CGROUP_ROOT, KSS_E2E_NODE_IP, KSS_E2E_POD_SUBNET: see
#                   node-e2e.sh and control-plane.sh
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$E2E_DIR/.." && pwd)
export KSS_E2E_STATE=${KSS_E2E_STATE:-/tmp/kss-e2e-run}
CARGO=${CARGO:-cargo}

log() { printf '[e2e-run] %s\n' "$*" >&2; }

# Before `--`: `--test NAME` (repeatable) runs only that file of e2e/tests/ (`--lib`: the
# library's unit tests); after it: arguments for each test binary.
only=()
test_args=()
while (($#)); do
  case $1 in
    --) shift; test_args=("$@"); break ;;
    --test)
      [[ $# -ge 2 ]] || { log "--test needs a name (a file of e2e/tests/)"; exit 2; }
      only+=("$2"); shift 2 ;;
    --test=*) only+=("${1#--test=}"); shift ;;
    --lib) only+=(kss_e2e); shift ;;
    *) log "unknown argument $1 (before --: --test NAME or --lib; after --: test binary arguments)"; exit 2 ;;
  esac
done

t0=$SECONDS
log "building / locating the control-plane tools"
KSS_E2E_BIN=$(bash "$E2E_DIR/build-tools.sh" | tail -n 1)
export KSS_E2E_BIN

WORK=$(mktemp -d -t kss-e2e-run.XXXXXX)

FORWARDER=
cleanup() {
  local status=$?
  [[ -z $FORWARDER ]] || kill "$FORWARDER" 2>/dev/null || true
  rm -rf "$WORK"
  log "done in $((SECONDS - t0)) s (exit $status)"
  exit "$status"
}
trap cleanup EXIT

# CRDs go in before kube-controller-manager starts, so that its garbage collector
# knows their kinds from the beginning (see control-plane.sh).
cat >"$WORK/pre-cm-hook.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
shopt -s nullglob
# Ours, and the Prometheus Operator's that the chart's monitoring objects need.
files=("$ROOT"/crds/*.yaml "$(dirname "$KSS_E2E_BIN")"/monitoring-crds/*.yaml)
if ((\${#files[@]} == 0)); then
  echo "[e2e-run] no CRDs in $ROOT/crds" >&2
  exit 0
fi
names=()
for f in "\${files[@]}"; do
  while IFS= read -r name; do
    [[ \$name == customresourcedefinition.* ]] && names+=("\$name")
  done < <(kubectl apply --server-side --force-conflicts -o name -f "\$f")
done
if ((\${#names[@]})); then
  kubectl wait --for=condition=Established --timeout=60s "\${names[@]}" >/dev/null
  echo "[e2e-run] CRDs established: \${names[*]}" >&2
fi
EOF
chmod +x "$WORK/pre-cm-hook.sh"
export KSS_E2E_PRE_CM_HOOK="$WORK/pre-cm-hook.sh"

# Compile first, so that the control plane does not idle through a build (and a
# compile error costs no `up`). The build is exactly `make test`'s first one
# (`cargo test --workspace --all-targets`): the same features, so nothing is compiled
# twice. Building `-p kss-e2e` alone would resolve other features and rebuild much of
# the dependency tree, doubling the target dir. It leaves target/debug/kss (the binary
# the pod runner starts) and target/debug/kss-operator; the e2e test binaries are read
# off cargo's JSON messages.
log "building the workspace's binaries and tests (as \`cargo test --workspace --all-targets\`)"
tests_json="$WORK/test-binaries.json"
(cd "$ROOT" && "$CARGO" test --workspace --all-targets --no-run --locked \
  --message-format=json-render-diagnostics) >"$tests_json"
# name<TAB>path of every kss-e2e test binary: the library's unit tests ("kss_e2e") and
# one per file of e2e/tests/.
mapfile -t e2e_bins < <(jq -r 'select(.reason == "compiler-artifact" and .executable != null
    and .profile.test and (.package_id | test("#kss-e2e@")))
  | "\(.target.name)\t\(.executable)"' "$tests_json" | sort)
if ((${#e2e_bins[@]} == 0)); then
  log "no kss-e2e test binaries in cargo's output"
  exit 1
fi

# The images are assembled from the binaries just built (debug profile, dependencies
# optimised: see Cargo.toml), as the Dockerfile's runtime stages say.
KSS_BIN_DIR=$(jq -r 'select(.reason == "compiler-artifact" and .executable != null
    and .target.name == "kss" and (.target.kind | index("bin")) and (.profile.test | not))
  | .executable' "$tests_json" | head -n 1 | xargs dirname)
export KSS_BIN_DIR

selected=()
for entry in "${e2e_bins[@]}"; do
  name=${entry%%$'\t'*}
  if ((${#only[@]})) && [[ " ${only[*]} " != *" $name "* ]]; then
    continue
  fi
  selected+=("$entry")
done
if ((${#selected[@]} == 0)); then
  log "no test binary named ${only[*]}"
  exit 1
fi
printf '%s\n' "${selected[@]}" >"$WORK/selected.tsv"

# MariaDB listens on the host's loopback, which the node's network namespace does not
# share. A Unix socket is a file, reachable from in there: this socat forwards it to the
# server's TCP port (so TLS to the server works as over any network), and run-inside.sh
# serves it on the node address.
: "${KSS_TEST_MYSQL_URL:?eval \"\$(scripts/mariadb.sh env)\" first}"
mysql_hostport=${KSS_TEST_MYSQL_URL#*@}
mysql_hostport=${mysql_hostport%%/*}
export KSS_E2E_MYSQL_FORWARD="$WORK/mysql.sock"
socat "UNIX-LISTEN:$KSS_E2E_MYSQL_FORWARD,fork,mode=600" "TCP:$mysql_hostport" &
FORWARDER=$!

export E2E_DIR KSS_E2E=1 SELECTED="$WORK/selected.tsv"
export TEST_ARGS="${test_args[*]}"
bash "$E2E_DIR/node-e2e.sh" -- bash "$E2E_DIR/run-inside.sh"
