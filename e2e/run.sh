#!/usr/bin/env bash
# Runs the e2e test suite (the kss-e2e crate's tests) against a real control plane:
# builds or locates the tools (cached), builds the workspace's binaries and tests as
# `cargo test --workspace --all-targets` does, brings the control plane up with the CRDs
# of crds/ installed before kube-controller-manager starts, runs each kss-e2e test
# binary with --test-threads=1, and always brings the control plane down again.
#
#   e2e/run.sh                               # the whole suite
#   e2e/run.sh --test operator               # only e2e/tests/operator.rs (repeatable)
#   e2e/run.sh --test operator -- --nocapture standalone   # after `--`: test binary args
#
# Environment:
#   KSS_E2E_STATE   control-plane state dir (default /tmp/kss-e2e-run; wiped by `up`);
#                   the tests' pod runners keep their pods' files in $KSS_E2E_STATE/podrunner.
#                   Two runs at once need two state dirs (`up` refuses a live one).
#   KSS_E2E_KEEP=1  leave the control plane running after the tests (then run
#                   `KSS_E2E_STATE=... e2e/control-plane.sh down` yourself)
#   CARGO           cargo command (default cargo)
#   KSS_E2E_CACHE, KSS_E2E_POD_CIDR, KSS_E2E_NODE_NAME: see control-plane.sh
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$E2E_DIR/.." && pwd)
export KSS_E2E_STATE=${KSS_E2E_STATE:-/tmp/kss-e2e-run}
CARGO=${CARGO:-cargo}
CP="$E2E_DIR/control-plane.sh"

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
CP_UP=0

# Processes a pod runner started and that outlived the tests (a test binary killed
# hard): kill those whose pid file still names a live kss process.
kill_leftovers() {
  local f pid exe
  [[ -d "$KSS_E2E_STATE/podrunner" ]] || return 0
  while IFS= read -r -d '' f; do
    pid=$(<"$f") || continue
    [[ $pid =~ ^[0-9]+$ ]] || continue
    exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || continue
    if [[ $(basename "$exe") == kss ]]; then
      log "killing leftover pod process $pid ($f)"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done < <(find "$KSS_E2E_STATE/podrunner" -name pid -type f -print0 2>/dev/null)
}

cleanup() {
  local status=$?
  # Only a control plane this run brought up is ours to stop: `up` refuses (and stops
  # nothing) while another run's control plane lives in the same state dir.
  if ((CP_UP)); then
    kill_leftovers
    if [[ ${KSS_E2E_KEEP:-} == 1 ]]; then
      log "KSS_E2E_KEEP=1: control plane left running in $KSS_E2E_STATE"
    else
      bash "$CP" down || true
    fi
  fi
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

bash "$CP" up
CP_UP=1
eval "$(bash "$CP" env)"
export KUBECONFIG KSS_E2E=1
mkdir -p "$KSS_E2E_STATE/podrunner"

# Each binary runs from e2e/ (as cargo test would), one test at a time; a failing binary
# does not hide the results of the others (as --no-fail-fast).
cd "$E2E_DIR"
failed=()
ran=0
for entry in "${e2e_bins[@]}"; do
  name=${entry%%$'\t'*}
  path=${entry#*$'\t'}
  if ((${#only[@]})) && [[ " ${only[*]} " != *" $name "* ]]; then
    continue
  fi
  ran=$((ran + 1))
  log "running $name: $path --test-threads=1 ${test_args[*]}"
  if ! "$path" --test-threads=1 "${test_args[@]}"; then
    failed+=("$name")
  fi
done
if ((ran == 0)); then
  log "no test binary named ${only[*]}"
  exit 1
fi
if ((${#failed[@]})); then
  log "failed: ${failed[*]}"
  exit 1
fi
