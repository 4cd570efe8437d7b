#!/usr/bin/env bash
# The seeded fault run (keyserver/server/tests/chaos.rs) on its own, with what it needs:
# the test MariaDB (started if it is not running) and the fault tools.
#
#   scripts/chaos.sh [SECONDS [SEED]]     # default 120 s, a seed from the clock
#
# `make chaos SECONDS=… SEED=…` calls it. The run prints its seed and fault schedule
# first; the same seed draws the same schedule. Extra arguments go to cargo test
# (--release, say, for long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
seed="${2:-}"
shift $(( $# > 2 ? 2 : $# ))
eval "$(bash scripts/mariadb.sh up)"
eval "$(bash scripts/fault-tools.sh)"
export KSS_REQUIRE_MYSQL=1 KSS_CHAOS_SECONDS="$seconds" KSS_CHAOS_SEED="$seed"
exec "${CARGO:-cargo}" test -p kss-server --test chaos "$@" -- --nocapture
