# Container images of kss: the keyserver (`kss`) and the operator (`kss-operator`).
#
#   docker build --target kss -t ghcr.io/kss-project/kss:0.1.0 .
#   docker build --target kss-operator -t ghcr.io/kss-project/kss-operator:0.1.0 .
#
# These are the tags the operator deploys by default (operator/src/desired/workload.rs
# DEFAULT_IMAGE) and the tag of manifests/install/30-operator.yaml; the version is the
# crates' version (VERSION below). e2e/tests/dockerfile.rs checks this file against the
# workspace: COPY sources, workspace members, binary names, users, pins, entrypoints,
# default commands and these tags.
#
# Base images are pinned by tag. To pin them by digest as well (reproducible builds),
# resolve each tag once with `docker buildx imagetools inspect <image:tag>` and write
# `FROM <image:tag>@sha256:<digest>`; the tags alone are the pins here because no
# registry is reachable where this file was written, so no digest could be verified.
#
# protoc needs no system package: keyserver/proto/build.rs uses the protoc shipped by the
# protoc-bin-vendored crate (Linux x86_64 and aarch64 binaries included).

# VERSION of the images (their labels): the crates' version.
ARG VERSION=0.1.0

# ---------------------------------------------------------------------------- builder

# Rust 1.95 (the workspace's rust-version) on Debian bookworm (the runtime's glibc).
# builder compiles kss and kss-operator in release mode.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependencies only, in a layer of their own: the workspace manifests with stub
#    sources, so that this layer is rebuilt only when a Cargo.toml or Cargo.lock changes.
#    Every workspace member must be listed (cargo loads them all); every declared bench
#    target needs a stub file (cargo checks their paths even when not building them).
COPY Cargo.toml Cargo.lock ./
COPY keyserver/policy/Cargo.toml keyserver/policy/
COPY keyserver/crypto/Cargo.toml keyserver/crypto/
COPY keyserver/store/Cargo.toml keyserver/store/
COPY keyserver/client/Cargo.toml keyserver/client/
COPY keyserver/server/Cargo.toml keyserver/server/
COPY keyserver/fuzz/Cargo.toml keyserver/fuzz/
COPY e2e/Cargo.toml e2e/
COPY operator/Cargo.toml operator/
# The generated gRPC code changes only with the .proto files: built for real here.
COPY keyserver/proto keyserver/proto
RUN set -eu; \
    for stub in keyserver/policy/src/lib.rs keyserver/crypto/src/lib.rs \
                keyserver/store/src/lib.rs keyserver/client/src/lib.rs \
                keyserver/server/src/lib.rs keyserver/server/src/main.rs \
                operator/src/lib.rs operator/src/main.rs e2e/src/lib.rs \
                keyserver/fuzz/src/lib.rs \
                keyserver/crypto/benches/floor.rs keyserver/policy/benches/evaluate.rs \
                keyserver/server/benches/policy_eval.rs; do \
        mkdir -p "$(dirname "$stub")"; \
        case "$stub" in \
            */lib.rs) : > "$stub" ;; \
            *) echo 'fn main() {}' > "$stub" ;; \
        esac; \
    done; \
    cargo build --release --locked -p kss-server -p kss-operator --bin kss --bin kss-operator

# 2. The sources. COPY keeps the files' modification times, which are older than the
#    stubs' build: touch the crate roots so that cargo rebuilds our crates.
COPY keyserver keyserver
COPY operator operator
RUN set -eu; \
    touch keyserver/policy/src/lib.rs keyserver/crypto/src/lib.rs \
          keyserver/store/src/lib.rs keyserver/client/src/lib.rs \
          keyserver/server/src/lib.rs keyserver/server/src/main.rs \
          operator/src/lib.rs operator/src/main.rs keyserver/fuzz/src/lib.rs; \
    cargo build --release --locked -p kss-server -p kss-operator --bin kss --bin kss-operator; \
    mkdir -p /out/var/lib/kss; \
    cp target/release/kss target/release/kss-operator /out/

# ---------------------------------------------------------------------------- runtime

# Distroless "cc": glibc and libgcc (the binaries are dynamically linked against them),
# CA certificates, tzdata, /etc/passwd with the nonroot user (65532); no shell, no
# package manager.
#
# Without Docker, e2e/images.sh assembles the same two images with crane and reads
# them from this file: e2e/image/dockerfile-stage.py follows a target stage (kss,
# kss-operator) through FROM runtime and takes its COPY, LABEL (with ARG VERSION), ENV,
# USER, EXPOSE, ENTRYPOINT and CMD lines; only this distroless base is replaced, by
# e2e/image/runtime-base.list (the same packages' files from a Debian 12 host). An
# instruction in these stages that dockerfile-stage.py does not know fails that build,
# so a change here is never silently missing from those images.
# runtime is the base of both images.
#
# No HEALTHCHECK (scripts/iac-scan.sh, checkov): Kubernetes ignores it; the pods' probes
# are the health checks (the operator's httpGet /healthz, the keyservers' gRPC health),
# and the distroless base has no shell or client to run one.
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK - the pod probes check health (operator /healthz, keyserver gRPC health); distroless has no shell or client to run one
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/kss-project/kss" \
      org.opencontainers.image.url="https://github.com/kss-project/kss" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="kss-project" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

# ------------------------------------------------------------------------ kss-operator

# kss-operator is the operator image: `docker build --target kss-operator`.
FROM runtime AS kss-operator
LABEL org.opencontainers.image.title="kss-operator" \
      org.opencontainers.image.description="The kss Kubernetes operator: KeyShardCluster and KssPolicy reconciled into keyserver pods"
COPY --from=builder /out/kss-operator /usr/local/bin/kss-operator
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kss-operator"]
CMD ["run"]

# --------------------------------------------------------------------------------- kss

# The last stage: what `docker build .` without --target builds.
# kss is the keyserver image: `docker build --target kss`.
FROM runtime AS kss
LABEL org.opencontainers.image.title="kss" \
      org.opencontainers.image.description="The kss keyserver daemon and admin CLI"
COPY --from=builder /out/kss /usr/local/bin/kss
# The data directory (SQLite, master key, TLS, admin socket), owned by the nonroot user;
# the operator mounts a volume here.
COPY --from=builder --chown=65532:65532 /out/var/lib/kss /var/lib/kss
ENV KSS_DATA_DIR=/var/lib/kss
USER 65532:65532
# gRPC over TLS (the default --listen; the operator's pods use 8443 and set it).
EXPOSE 7443
ENTRYPOINT ["/usr/local/bin/kss"]
CMD ["serve"]
