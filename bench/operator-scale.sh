#!/usr/bin/env bash
# The operator at scale (e2e/tests/scale.rs): 100 KeyShardClusters whose pods a kwok node
# keeps Running, one operator process; prints its RSS, reconcile rate and p50/p99, API
# requests per reconcile, status writes per minute, and the time to Ready of one more
# cluster on the real node under that load. Root (the e2e suite's real node).
#
#   bench/operator-scale.sh                       # 100 clusters, a 60 s window
#   KSS_SCALE_CLUSTERS=200 KSS_SCALE_WINDOW_SECS=120 bench/operator-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/mariadb.sh up)"
export KSS_E2E_STATE=${KSS_E2E_STATE:-/tmp/kss-e2e-scale}
exec bash e2e/run.sh --test scale -- --ignored --nocapture
