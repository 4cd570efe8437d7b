#!/usr/bin/env bash
# The whole test suite (`make test`), from a fresh clone on a fresh machine of this kind:
# sets up what the tests need, then runs them all with every real part required.
#
#   1. Debian packages the tests call (make, gcc, curl, openssl, flock, jq; MariaDB and
#      libfaketime come with their own scripts), Go 1.26 for the Go tools;
#   2. the Go tools, pinned and cached in ~/.cache: grpcurl (~/.cache/kss-tools), the e2e
#      control plane (e2e/build-tools.sh, ~/.cache/kss-e2e: ~15 min cold), the real node
#      (e2e/build-node.sh, same cache: ~22 min cold), the fault
#      injectors (scripts/fault-tools.sh); the cargo-fuzz targets (nightly; skipped, and
#      said so, without a nightly toolchain);
#   3. the test MariaDB (scripts/mariadb.sh up; stopped again at the end if this script
#      started it);
#   4. the IaC scan (scripts/iac-scan.sh: checkov, pinned and cached in ~/.cache/kss-tools,
#      over manifests/, the rendered chart and the Dockerfile);
#   5. with KSS_REQUIRE_MYSQL=1, so that a test whose real part is missing fails instead of
#      passing as skipped: the workspace's tests, its doc tests, then the Kubernetes e2e
#      suite on a real control plane with a real node (e2e/run.sh);
#   6. as its last lines: how many tests skipped a part, and why (each such test appends
#      a line to $KSS_SKIP_LOG).
#
# CARGO (default cargo) is the cargo to run.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"

step() { printf '\n==> %s\n' "$*"; }

step "packages and toolchain"
need_apt=()
command -v make >/dev/null || need_apt+=(make)
command -v cc >/dev/null || need_apt+=(gcc)
command -v curl >/dev/null || need_apt+=(curl)
# The e2e harness: openssl for its PKI, flock (util-linux) to serialise tool builds, jq to
# read cargo's JSON messages.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v flock >/dev/null || need_apt+=(util-linux)
command -v jq >/dev/null || need_apt+=(jq)
# The real node of the e2e suite: namespaces and addresses (util-linux, iproute2), and
# socat to serve the host's MariaDB inside the node's network namespace.
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v socat >/dev/null || need_apt+=(socat)
# Installed here, not by e2e/build-node.sh (which runs in the background below, beside
# other apt-get calls that would find dpkg locked): runc, iptables and conntrack.
command -v runc >/dev/null || need_apt+=(runc)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v conntrack >/dev/null || need_apt+=(conntrack)
# Go 1.26 lives in /usr/local/go on this machine kind, which a stripped PATH may miss.
# Debian's golang-go (1.19) is a last resort, too old for the pinned modules: the version
# check below says so.
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || need_apt+=(golang-go)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ "${go_minor:-0}" -lt 26 ]; then
  echo "go 1.26 or newer is required (found $(go env GOVERSION))" >&2
  exit 1
fi
command -v "$CARGO" >/dev/null || { echo "cargo (Rust 1.95) is required" >&2; exit 1; }
go version
"$CARGO" --version

step "grpcurl (a real third-party gRPC client for the keyserver tests)"
GRPCURL_VERSION=v1.9.4
grpcurl_bin="$HOME/.cache/kss-tools/grpcurl-$GRPCURL_VERSION"
if [ ! -x "$grpcurl_bin/grpcurl" ]; then
  GOBIN="$grpcurl_bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
fi
export GRPCURL="$grpcurl_bin/grpcurl"
"$GRPCURL" -version 2>&1 | head -1

step "e2e control-plane tools (kube-apiserver, etcd, kwok, ...; built once from the Go module proxy)"
time bash e2e/build-tools.sh | tail -n 1

step "e2e real-node tools (kubelet, kube-proxy, containerd, CNI plugins, CoreDNS, crane, pause; built once)"
# Cached: instant. Cold (~22 min of Go builds at nice 15), it runs beside the Rust build
# and tests, which keep priority, and is waited for before the e2e suite.
node_log="$(mktemp)"
bash e2e/build-node.sh >"$node_log" 2>&1 &
node_build=$!

step "fault injectors (toxiproxy and go-fuse from the Go module proxy, Debian's libfaketime)"
eval "$(bash scripts/fault-tools.sh)"

export KSS_SKIP_LOG
KSS_SKIP_LOG="$(mktemp)"
started_db=
cleanup() {
  [ -z "$started_db" ] || bash scripts/mariadb.sh down >/dev/null 2>&1 || true
  rm -f "$KSS_SKIP_LOG"
}
trap cleanup EXIT

step "fuzz targets (cargo-fuzz on nightly; their corpora and findings run as tests below)"
# cargo-fuzz is pinned and cached like the other tools; its builds (instrumented, release)
# are cached outside the clone, keyed by the nightly compiler's version.
CARGO_FUZZ_VERSION=0.13.2
fuzz_tools="$HOME/.cache/kss-tools/cargo-fuzz-$CARGO_FUZZ_VERSION"
command -v rustup >/dev/null && { rustup toolchain list | grep -q '^nightly' ||
  rustup toolchain install nightly --profile minimal || true; }
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
  [ -x "$fuzz_tools/bin/cargo-fuzz" ] ||
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$fuzz_tools"
  nightly_key=$(rustc +nightly --version | sha256sum | cut -c1-12)
  fuzz_target_dir="$HOME/.cache/kss-tools/fuzz-target-$nightly_key"
  (export PATH="$fuzz_tools/bin:$PATH"
    cd keyserver/fuzz/cargo-fuzz &&
    time cargo +nightly fuzz build --fuzz-dir . --target-dir "$fuzz_target_dir/kss-fuzz" 2>&1 | tail -n 2)
  (export PATH="$fuzz_tools/bin:$PATH"
    cd keyserver/policy &&
    time cargo +nightly fuzz build --target-dir "$fuzz_target_dir/policy" 2>&1 | tail -n 2)
else
  echo "fuzz targets: building them with cargo-fuzz needs a nightly toolchain, which rustup could not install" >> "$KSS_SKIP_LOG"
fi

step "MariaDB (Debian's mariadb-server on loopback, for the MySQL tests)"
bash scripts/mariadb.sh status >/dev/null 2>&1 || started_db=1
eval "$(bash scripts/mariadb.sh up)"
export KSS_REQUIRE_MYSQL=1

step "IaC scan (checkov: manifests, rendered chart, Dockerfile)"
bash scripts/iac-scan.sh

step "the workspace's tests"
"$CARGO" test --workspace --all-targets

step "doc tests"
"$CARGO" test --workspace --doc

step "e2e real-node tools: waiting for the build started above"
if ! wait "$node_build"; then
  cat "$node_log" >&2
  echo "e2e/build-node.sh failed" >&2
  exit 1
fi
# What was built and how long each took (cold), or "all node binaries ready in 0 s".
grep -E '^\[build-node\] (built|all)' "$node_log" || true
rm -f "$node_log"

step "the Kubernetes e2e suite (a real control plane and a real node)"
CARGO="$CARGO" bash e2e/run.sh

step "skipped"
skipped=$(grep -c . "$KSS_SKIP_LOG" || true)
if [ "${skipped:-0}" -eq 0 ]; then
  echo "no test skipped any part: every test ran with its real parts"
else
  echo "$skipped test(s) skipped a part:"
  sed 's/^/  /' "$KSS_SKIP_LOG"
fi
