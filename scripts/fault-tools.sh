#!/usr/bin/env bash
# Fault injectors for kss's fault tests, pinned and cached like the e2e tools:
#   * toxiproxy (server and CLI), built from the Go module proxy into
#     ~/.cache/kss-tools/toxiproxy-$TOXIPROXY_VERSION: a TCP proxy between an instance and
#     MariaDB that adds latency, drops traffic (blackhole), resets connections, or cuts
#     one direction (a commit that lands while its acknowledgement is lost);
#   * libfaketime (Debian's package): one process's clock jumped or skewed;
#   * go-fuse's loopback file system, built from the Go module proxy into
#     ~/.cache/kss-tools/go-fuse-$GO_FUSE_VERSION: a directory mirrored through FUSE, whose
#     daemon stopped with SIGSTOP is a file system that hangs (every call waits).
#
#   eval "$(scripts/fault-tools.sh)"     # installs what is missing, prints the exports:
#   KSS_TOXIPROXY_SERVER, KSS_TOXIPROXY_CLI, KSS_FAKETIME_LIB, KSS_FUSE_LOOPBACK
#   scripts/fault-tools.sh check         # also starts toxiproxy once and asks it its version
#
# Progress goes to stderr, so that stdout is only the exports.
set -euo pipefail

TOXIPROXY_VERSION=v2.5.0
TOOLS="${KSS_TOOLS_DIR:-$HOME/.cache/kss-tools}"
TOXI_DIR="$TOOLS/toxiproxy-$TOXIPROXY_VERSION"
GO_FUSE_VERSION=v2.12.1
FUSE_DIR="$TOOLS/go-fuse-$GO_FUSE_VERSION"

log() { printf '[fault-tools] %s\n' "$*" >&2; }

toxiproxy() {
    if [ -x "$TOXI_DIR/toxiproxy-server" ] && [ -x "$TOXI_DIR/toxiproxy-cli" ]; then
        return
    fi
    command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || export PATH="/usr/local/go/bin:$PATH"
    command -v go >/dev/null || { log "go is required to build toxiproxy"; exit 1; }
    log "building toxiproxy $TOXIPROXY_VERSION (Go module proxy) into $TOXI_DIR"
    local build
    build="$(mktemp -d)"
    GOBIN="$build" go install \
        "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" \
        "github.com/Shopify/toxiproxy/v2/cmd/cli@$TOXIPROXY_VERSION" >&2
    mkdir -p "$TOXI_DIR"
    mv "$build/server" "$TOXI_DIR/toxiproxy-server"
    mv "$build/cli" "$TOXI_DIR/toxiproxy-cli"
    rmdir "$build"
}

fuse_loopback() {
    if [ -x "$FUSE_DIR/loopback" ]; then
        return
    fi
    command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || export PATH="/usr/local/go/bin:$PATH"
    command -v go >/dev/null || { log "go is required to build go-fuse's loopback"; exit 1; }
    log "building go-fuse $GO_FUSE_VERSION loopback (Go module proxy) into $FUSE_DIR"
    local build
    build="$(mktemp -d)"
    GOBIN="$build" go install "github.com/hanwen/go-fuse/v2/example/loopback@$GO_FUSE_VERSION" >&2
    mkdir -p "$FUSE_DIR"
    mv "$build/loopback" "$FUSE_DIR/loopback"
    rmdir "$build"
}

faketime_lib() {
    local lib
    lib="$(find /usr/lib -name 'libfaketime.so.1' -path '*faketime*' 2>/dev/null | head -n 1)"
    if [ -z "$lib" ]; then
        log "installing Debian's libfaketime"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime >&2; }
        lib="$(find /usr/lib -name 'libfaketime.so.1' -path '*faketime*' 2>/dev/null | head -n 1)"
    fi
    [ -n "$lib" ] || { log "libfaketime.so.1 not found after installing libfaketime"; exit 1; }
    echo "$lib"
}

check() {
    local port pid version
    port=$((20000 + RANDOM % 20000))
    "$TOXI_DIR/toxiproxy-server" -host 127.0.0.1 -port "$port" >/dev/null 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true' RETURN
    for _ in $(seq 50); do
        version="$(curl -fsS "http://127.0.0.1:$port/version" 2>/dev/null)" && break
        sleep 0.1
    done
    [ -n "${version:-}" ] || { log "toxiproxy did not answer on port $port"; exit 1; }
    log "toxiproxy answers: $version"
    LD_PRELOAD="$1" FAKETIME="@2030-01-01 00:00:00" date -u +%Y >&2
}

toxiproxy
fuse_loopback
lib="$(faketime_lib)"
if [ "${1:-}" = check ]; then
    check "$lib"
fi
printf 'export KSS_TOXIPROXY_SERVER=%q\n' "$TOXI_DIR/toxiproxy-server"
printf 'export KSS_TOXIPROXY_CLI=%q\n' "$TOXI_DIR/toxiproxy-cli"
printf 'export KSS_FAKETIME_LIB=%q\n' "$lib"
printf 'export KSS_FUSE_LOOPBACK=%q\n' "$FUSE_DIR/loopback"
