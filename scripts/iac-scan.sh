#!/usr/bin/env bash
# The IaC scan of `make test`: checkov (pinned, from PyPI) over what kss ships for
# Kubernetes and Docker:
#   (a) manifests/ (the kubectl install bundle and the examples);
#   (b) the Helm chart charts/kss-operator rendered by `helm template` (the helm of
#       e2e/build-tools.sh), once with its default values, once with each values file
#       it ships (charts/kss-operator/ci/*.yaml: the policy and KeyShardCluster it
#       creates; the e2e test helm.rs installs with it), and once with watched
#       namespaces (Roles instead of the ClusterRole) and the monitoring objects;
#   (c) the Dockerfile (both images).
# Every finding is fixed or suppressed in place, next to the object or instruction, with
# its reason (`checkov.io/skip<N>: CKV_K8S_<X>=reason` annotations, `# checkov:skip=`
# comments); this script skips no check itself. Exits non-zero on any failed check.
#
# checkov is installed once into a venv outside the clone,
# $HOME/.cache/kss-tools/checkov-$CHECKOV_VERSION (Debian's python3-venv if `python3 -m
# venv` is missing). The scan runs offline (it passes in a network namespace without
# network, `unshare -n`): no Bridgecrew/Prisma API key reaches checkov (nothing is
# uploaded), --skip-download and BC_SKIP_MAPPING=TRUE (no policy, guideline or mapping
# download from the platform), CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE (no version check on
# PyPI), only the kubernetes and dockerfile frameworks (no package look-ups).
#
#   bash scripts/iac-scan.sh            # install if needed, scan, summary per target
#   KSS_IAC_VERBOSE=1 bash scripts/iac-scan.sh   # also the passed and skipped checks
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
VENV="$HOME/.cache/kss-tools/checkov-$CHECKOV_VERSION"
CHART=charts/kss-operator

log() { printf '[iac-scan] %s\n' "$*" >&2; }

# ------------------------------------------------------------------------ install
# checkov's own dependencies are pinned too (scripts/iac-scan.constraints.txt), so that a
# fresh machine installs what was checked here. .installed marks a finished install and
# holds the constraints' hash: an interrupted install, or changed constraints, start over.
CONSTRAINTS=scripts/iac-scan.constraints.txt
constraints_hash="$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$constraints_hash" ]; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    log "python3 -m venv is missing: installing Debian's python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >&2
  fi
  log "installing checkov $CHECKOV_VERSION (PyPI) into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" \
    "checkov==$CHECKOV_VERSION" >&2
  echo "$constraints_hash" >"$VENV/.installed"
fi

# ------------------------------------------------------------------------ render
# helm: the pinned one of the e2e tools (built once, cached in ~/.cache/kss-e2e; `make
# test` has built it by now). Its homes live in the scratch directory: nothing is read
# from or written to the user's helm configuration.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! helm_bin="$(bash e2e/build-tools.sh 2>"$work/build-tools.log" | tail -n 1)" ||
   [ ! -x "$helm_bin/helm" ]; then
  cat "$work/build-tools.log" >&2
  log "e2e/build-tools.sh did not give a helm"
  exit 1
fi
helm() {
  HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" \
    HELM_DATA_HOME="$work/helm/data" "$helm_bin/helm" "$@"
}
mkdir -p "$work/chart"
# The release and namespace of the README's `helm install`.
helm template kss-operator "$CHART" --namespace kss-system >"$work/chart/default.yaml"
for values in "$CHART"/ci/*.yaml; do
  helm template kss-operator "$CHART" --namespace kss-system -f "$values" \
    >"$work/chart/$(basename "$values" .yaml).yaml"
done
# The other branch of the templates (e2e/tests/helm.rs renders it too): Roles in the
# watched namespaces instead of the ClusterRole, and the monitoring objects.
helm template kss-operator "$CHART" --namespace kss-system --set watchNamespace=kss \
  --set 'watchNamespaces={kss-a,kss-b}' --set metrics.serviceMonitor.enabled=true \
  --set metrics.podMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
  >"$work/chart/namespaced-monitoring.yaml"
rendered="default values$(for v in "$CHART"/ci/*.yaml; do printf ', %s' "${v#"$CHART"/}"; done), namespaced + monitoring"

# ------------------------------------------------------------------------ scan
# checkov's Kubernetes runner leaves out a YAML file it cannot parse without a word
# (CKV_PARSE_ERROR_FAIL does not cover it): every scanned YAML file must parse first
# (PyYAML, from checkov's venv).
"$VENV/bin/python" - manifests "$work/chart" <<'PY'
import pathlib, sys, yaml
bad = 0
for root in sys.argv[1:]:
    for path in sorted(pathlib.Path(root).rglob("*.y*ml")):
        try:
            list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as e:
            bad += 1
            print(f"[iac-scan] {path}: not YAML, checkov would skip it: {e}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# Offline (see the header): no API key reaches checkov, nothing is downloaded, no update
# check on PyPI. CKV_PARSE_ERROR_FAIL: a parse error that checkov does report fails.
export BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE CKV_PARSE_ERROR_FAIL=TRUE
quiet=(--quiet)
[ -z "${KSS_IAC_VERBOSE:-}" ] || quiet=()

summary=()
failed_total=0
# scan NAME FRAMEWORK CHECKOV-ARGS...: one checkov run; its report goes to stdout, its
# counts to the summary. A run that checked nothing fails too (nothing was parsed).
# IN (default .) is the directory it runs in: checkov names files relative to it.
scan() {
  local name="$1" framework="$2" rc=0
  shift 2
  printf '\n[iac-scan] checkov %s: %s\n' "$CHECKOV_VERSION" "$name"
  (cd "${IN:-.}" && env -u BC_API_KEY -u PRISMA_API_URL "$VENV/bin/checkov" "$@" \
    --framework "$framework" --skip-download --compact "${quiet[@]}" --output cli) \
    >"$work/out" 2>&1 || rc=$?
  cat -s "$work/out"
  local counts passed failed skipped
  counts="$(sed -n 's/^Passed checks: \([0-9]*\), Failed checks: \([0-9]*\), Skipped checks: \([0-9]*\).*/\1 \2 \3/p' "$work/out" | head -n 1)"
  if [ -z "$counts" ]; then
    log "$name: checkov printed no result (exit $rc)"
    summary+=("$name: no result (checkov exit $rc)")
    failed_total=$((failed_total + 1))
    return
  fi
  read -r passed failed skipped <<<"$counts"
  if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
    failed=1
    summary+=("$name: nothing checked")
  elif [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1
    summary+=("$name: checkov exit $rc")
  else
    summary+=("$name: passed $passed, failed $failed, skipped $skipped (suppressed in place)")
  fi
  failed_total=$((failed_total + failed))
}

scan "manifests/ (install bundle, examples)" kubernetes -d manifests
# Files named /chart/<values>.yaml: the chart rendered with those values.
IN="$work" scan "chart $CHART rendered ($rendered)" kubernetes -d chart
scan "Dockerfile" dockerfile -f Dockerfile

printf '\n[iac-scan] summary (checkov %s)\n' "$CHECKOV_VERSION"
printf '  %s\n' "${summary[@]}"
if [ "$failed_total" -ne 0 ]; then
  printf '[iac-scan] FAILED: %s failed check(s); fix each, or suppress it in place with its reason\n' "$failed_total"
  exit 1
fi
printf '[iac-scan] OK: no unsuppressed finding\n'
