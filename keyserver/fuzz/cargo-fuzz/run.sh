#!/usr/bin/env bash
# Fuzzes one kss-fuzz target, or all of them in turn, with libFuzzer (nightly + cargo-fuzz):
#   keyserver/fuzz/cargo-fuzz/run.sh TARGET|all [SECONDS] [extra libFuzzer flags...]
# SECONDS (default 300) is per target. The run starts from the committed corpus
# (../corpus/TARGET, copied into work/TARGET, git-ignored, where the fuzzer adds what it
# finds); findings land in artifacts/TARGET/. To keep a finding as a regression test,
# minimize it and copy it into ../crashes/TARGET/ (tests/corpus.rs runs it on stable):
#   cargo +nightly fuzz tmin --fuzz-dir . TARGET artifacts/TARGET/crash-...
# To refresh the committed corpus with a minimized set of what was found:
#   cargo +nightly fuzz cmin --fuzz-dir . TARGET work/TARGET && cp work/TARGET/* ../corpus/TARGET/
set -euo pipefail
cd "$(dirname "$0")"
# cargo-fuzz as .ci/run installs it, when it is not on PATH.
command -v cargo-fuzz >/dev/null || export PATH="$HOME/.cache/kss-tools/cargo-fuzz-0.13.2/bin:$PATH"
target="${1:?usage: run.sh TARGET|all [SECONDS] [libFuzzer flags...]}"
seconds="${2:-300}"
shift 2 || shift $#
if [ "$target" = all ]; then
  targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^kss')
else
  targets="$target"
fi
for t in $targets; do
  mkdir -p "work/$t" "artifacts/$t"
  cp -n ../corpus/"$t"/* "work/$t/" 2>/dev/null || true
  echo "==> $t ($seconds s)"
  cargo +nightly fuzz run --fuzz-dir . "$t" "work/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "$@" 2>&1 | tee "work/$t.log" | grep -E '^(#[0-9]+ *DONE|stat::|==|Done)' || true
done
