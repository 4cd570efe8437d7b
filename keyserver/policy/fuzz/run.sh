#!/usr/bin/env bash
# Runs the policy-loader fuzz target by hand (CI does not run it).
#   keyserver/policy/fuzz/run.sh [SECONDS] [extra libFuzzer flags...]   (default 600)
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). Writes a small seed corpus
# (the example policy of docs/policy.md and edge cases) into corpus/policy_load/ (git-ignored; the
# fuzzer adds what it finds there), then fuzzes with policy.dict. Crashes land in
# artifacts/policy_load/; minimize one with
#   cargo +nightly fuzz tmin policy_load artifacts/policy_load/crash-...
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
shift || true
corpus=corpus/policy_load
mkdir -p "$corpus"

seed() { cat > "$corpus/seed-$1.yml"; }

cp ../../../bench/example-policy.yml "$corpus/seed-spec-example.yml"
printf '{}\n' | seed empty-map
printf '' | seed empty-file
printf 'search:\n' | seed null-section
printf 'decrypt: []\nsearch:\n  - []\n' | seed empty-lists
printf 'decrypt:\n  - ~\n' | seed null-rule-set
seed every-rule <<'YAML'
decrypt:
  - - rule: meta-rule
      paths: [/, /root/sub/, '*.pdf', sub/path, 'basename.*', baseonly, '!/taxi']
      regexes: ['^/(?!secret/)[^/]+/.*\.docx?$', '(?<=/)x\d+$']
      case_sensitive: yes
      require_complete: On
    - rule: per-profile-throttle-rule
      per_hour: -1
      per_day: 0
      persistent: false
      expiry_secs: 90
      db-uri: sqlite://x
  - - rule: time-range-rule
      time_start: 9:00am
      time_end: 17:00:30
      days: [0, 1, 2, 3, 4]
      include: [2022-03-12, '2022-12-31']
      exclude: [2022-04-15]
    - rule: profile-id-rule
      profile_ids: [00FFaa, humble busy much cactus, 'a b c d e']
      rule_id: shared
  - - rule: time-range-rule
      time_start: 02:00+04:00
      time_end: 06:00+04:00
    - rule: approve-rule
      rule_id: shared
search:
  - - {rule: profile-id-rule, profile_ids: ["0102"]}
  - - rule: reject-rule
start_session:
  - - rule: session-params-rule
      max_request_count: 0
      max_time_seconds: 604799
      end_by_time: 5:00pm EST
create_profile:
  - - rule: approve-rule
create_location: []
rename:
  - []
YAML
seed anchors-and-merges <<'YAML'
decrypt:
  - - &t
      rule: per-profile-throttle-rule
      per_day: 30
      persistent: true
    - <<: *t
      per_hour: 5
  - - *t
secure_export:
  - - rule: meta-rule
      paths: &p [/public, "/caf\u00e9", 'naïve/dir/']
  - - rule: meta-rule
      paths: *p
      rule_id: ''
YAML
seed typed-scalars <<'YAML'
change_profile:
  - - rule: time-range-rule
      time_start: 17:00
      time_end: "23:59:59"
      days: []
      include: []
      exclude: [2024-02-29]
    - rule: per-profile-throttle-rule
      per_hour: 0x1F
      per_day: 1_000
      persistent: !!bool "yes"
      rule_id: 12
    - rule: per-profile-throttle-rule
      per_day: 017
      rule_id: ~
YAML
seed block-scalars <<'YAML'
---
decrypt:
- - rule: meta-rule
    regexes:
      - |-
        ^/(?:a|b)
      - >-
        c$
    paths: [ "x/", 'it''s' ]
...
YAML

exec cargo +nightly fuzz run policy_load "$corpus" -- \
  -dict=policy.dict -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "$@"
