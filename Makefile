# One entry point for the whole test suite (README: "make test"); .ci/run calls it.
CARGO ?= cargo

.PHONY: test lint bench bench-keyserver bench-cluster fuzz e2e chaos

# The whole suite from a fresh clone (scripts/test.sh): sets up what the tests need
# (Debian packages, the Go tools, the fault injectors, the fuzz targets, MariaDB), then
# the workspace's tests, doc tests and the Kubernetes e2e suite on a real control plane,
# every real part required; its last lines count the tests that skipped a part, and why.
test:
	CARGO="$(CARGO)" bash scripts/test.sh

# The e2e suite alone: control plane up, `cargo test -p kss-e2e`, control plane down.
# Tools are built once and cached in ~/.cache/kss-e2e (a cold build takes ~15 min).
e2e:
	CARGO="$(CARGO)" bash e2e/run.sh

# The seeded fault run alone (`make test` runs 2 minutes of it): SECONDS of faults, the
# schedule drawn from SEED (default: from the clock; printed first, so a failing run can
# be replayed). MariaDB and the fault tools are set up by scripts/chaos.sh.
chaos:
	CARGO="$(CARGO)" bash scripts/chaos.sh $(or $(SECONDS),120) $(SEED)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench -p kss-policy --bench evaluate
	$(CARGO) bench -p kss-server --bench policy_eval
	bash bench/policy-eval.sh

# The keyserver and cluster mode against the crypto floor (README: Benchmarks).
bench-keyserver:
	bash bench/keyserver.sh

bench-cluster:
	bash bench/cluster.sh

# Fuzz the policy loader, then every kss-fuzz target in turn (nightly + cargo-fuzz);
# SECONDS per target, 300 by default (keyserver/fuzz/README.md).
fuzz:
	bash keyserver/policy/fuzz/run.sh $(or $(SECONDS),300)
	bash keyserver/fuzz/cargo-fuzz/run.sh all $(or $(SECONDS),300)

# The Kubernetes e2e harness alone (builds the control plane once, cached in ~/.cache/kss-e2e).
.PHONY: e2e-smoke
e2e-smoke:
	bash e2e/smoke.sh
