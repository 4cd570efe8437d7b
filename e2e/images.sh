#!/usr/bin/env bash
# Assemble the kss, kss-operator and pause images as OCI images without Docker, with
# go-containerregistry's crane (built by build-node.sh), and write each as a tarball
# that `ctr images import` takes:
#
#   e2e/images.sh [OUT_DIR]     # default OUT_DIR: $KSS_E2E_IMAGES or /tmp/kss-e2e-images
#
#   OUT_DIR/kss.tar             ghcr.io/kss-project/kss:<VERSION>
#   OUT_DIR/kss-operator.tar    ghcr.io/kss-project/kss-operator:<VERSION>
#   OUT_DIR/pause.tar           registry.k8s.io/pause:3.10.2 (the node's sandbox image)
#
# What goes into the kss images has one source, the Dockerfile: for each target stage,
# e2e/image/dockerfile-stage.py reads its COPY lines (binaries, /var/lib/kss and its
# owner), LABEL (with ARG VERSION), ENV, USER, EXPOSE, ENTRYPOINT and CMD, following
# FROM <stage> up to the external base. That base (distroless cc-debian12:nonroot,
# which cannot be pulled here) is replaced by e2e/image/runtime-base.list: the same
# kinds of files taken from this Debian 12 host (glibc, libgcc, libstdc++, libgomp,
# libssl, CA certificates, tzdata, netbase, /etc/passwd with nonroot = 65532).
# Binaries: COPY --from=builder /out/<name> is $KSS_BIN_DIR/<name> (default
# target/release of the workspace: `cargo build --release -p kss-server -p kss-operator
# --bin kss --bin kss-operator`); any other /out path is a directory the builder makes
# empty (its `mkdir -p /out/var/lib/kss`), checked against the Dockerfile.
#
# Environment: KSS_BIN_DIR, KSS_IMAGE_REPO (default ghcr.io/kss-project),
# KSS_E2E_NODE_BIN (default: output of build-node.sh), KSS_E2E_CACHE.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
OUT=${1:-${KSS_E2E_IMAGES:-/tmp/kss-e2e-images}}
KSS_BIN_DIR=${KSS_BIN_DIR:-$REPO_DIR/target/release}
IMAGE_REPO=${KSS_IMAGE_REPO:-ghcr.io/kss-project}
DOCKERFILE=$REPO_DIR/Dockerfile
BASE_LIST=$E2E_DIR/image/runtime-base.list
PAUSE_REF=registry.k8s.io/pause:3.10.2

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

NODE_BIN=${KSS_E2E_NODE_BIN:-$("$E2E_DIR/build-node.sh" | tail -n 1)}
CRANE=$NODE_BIN/crane
[[ -x $CRANE ]] || die "$CRANE missing; run e2e/build-node.sh"
command -v jq >/dev/null || die "jq not found"
mkdir -p "$OUT"

WORK=$(mktemp -d -t kss-e2e-images.XXXXXX)
REG_PID=
cleanup() {
  if [[ -n $REG_PID ]]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# crane's progress lines go to $WORK/crane.log, shown when a step fails.
trap 'rc=$?; [[ -s $WORK/crane.log ]] && tail -n 20 "$WORK/crane.log" >&2; exit $rc' ERR

# crane mutate works on a registry: an in-memory one of crane's own on loopback, for
# the duration of this script (crane talks plain HTTP to 127.0.0.1).
port=$((20000 + RANDOM % 12000))
"$CRANE" registry serve --address "127.0.0.1:$port" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
REG=127.0.0.1:$port
for _ in $(seq 1 50); do
  curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break
  kill -0 "$REG_PID" 2>/dev/null || die "crane registry serve exited: $(cat "$WORK/registry.log")"
  sleep 0.1
done

# layer_tar <rootfs dir> <tar>: a reproducible layer (sorted, mtime 0, numeric owners
# as they are in the staging dir).
layer_tar() {
  tar --sort=name --mtime=@0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf "$2" .
}

# ------------------------------------------------------------ base layer
base_cfg_env=()
base_user=
base_workdir=
build_base() {
  local root=$WORK/base
  mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64"
  # Debian 12 is merged-/usr: the same top-level links as the host.
  local l
  for l in bin sbin lib lib64; do
    [[ -L /$l ]] && ln -s "$(readlink "/$l")" "$root/$l"
  done
  : >"$WORK/base-files"
  local kind a b c
  while read -r kind a b c; do
    case $kind in
      '' | '#'*) continue ;;
      package)
        dpkg -L "$a" >/dev/null 2>&1 || die "Debian package $a not installed"
        dpkg -L "$a" | grep -vxE '/\.|/usr/share/(doc|man|info|lintian|locale|bug)(/.*)?' >>"$WORK/base-files"
        ;;
      file) echo "$a" >>"$WORK/base-files" ;;
      dir) install -d -m "$b" -o "$c" -g "$c" "$root$a" ;;
      tree) cp -a "$E2E_DIR/image/$a/." "$root/" ;;
      env) base_cfg_env+=("$a") ;;
      user) base_user=$a ;;
      workdir) base_workdir=$a ;;
      *) die "runtime-base.list: unknown line '$kind $a'" ;;
    esac
  done <"$BASE_LIST"
  # Existing symlinks to directories (lib -> usr/lib) are kept while extracting.
  sed "s|^/||" "$WORK/base-files" | sort -u | tar -C / --no-recursion -cf - -T - 2>"$WORK/tar.err" |
    tar -C "$root" --keep-directory-symlink -xf -
  [[ ! -s $WORK/tar.err ]] || die "collecting the base files: $(head -5 "$WORK/tar.err")"
  # The nonroot passwd/group of the tree win over anything a package brought.
  cp -a "$E2E_DIR/image/rootfs/." "$root/"
  chown -R 0:0 "$root/etc"
  layer_tar "$root" "$WORK/base.tar"
  log "base layer: $(du -sh "$WORK/base" | cut -f1) in $(wc -l <"$WORK/base-files") listed paths"
}

# ------------------------------------------------------------ kss images
build_target() {
  local target=$1
  local stage=$WORK/$target.json root=$WORK/$target-root
  python3 "$E2E_DIR/image/dockerfile-stage.py" "$DOCKERFILE" "$target" >"$stage"
  mkdir -p "$root"
  local n i src dst chown owner name
  n=$(jq '.copies | length' "$stage")
  for ((i = 0; i < n; i++)); do
    [[ $(jq -r ".copies[$i].from" "$stage") == builder ]] || die "$target: COPY not from builder"
    [[ $(jq '.copies['"$i"'].src | length' "$stage") == 1 ]] || die "$target: COPY with several sources"
    src=$(jq -r ".copies[$i].src[0]" "$stage")
    dst=$(jq -r ".copies[$i].dst" "$stage")
    chown=$(jq -r ".copies[$i].chown" "$stage")
    owner=${chown:-0:0}
    [[ $owner == *:* ]] || owner=$owner:$owner
    name=${src#/out/}
    [[ $name != "$src" ]] || die "$target: COPY source $src not under /out"
    mkdir -p "$root$(dirname "$dst")"
    if [[ $name != */* && -f $KSS_BIN_DIR/$name ]]; then
      install -m 0755 -o "${owner%:*}" -g "${owner#*:}" "$KSS_BIN_DIR/$name" "$root$dst"
    elif grep -q "mkdir -p $src" "$DOCKERFILE"; then
      install -d -m 0755 -o "${owner%:*}" -g "${owner#*:}" "$root$dst"
    else
      die "$target: $src is neither a binary in $KSS_BIN_DIR nor a directory the builder makes"
    fi
  done
  # Parent directories the COPYs created belong to root, as with docker.
  layer_tar "$root" "$WORK/$target.tar"

  local version ref
  version=$(jq -r '.labels["org.opencontainers.image.version"] // empty' "$stage")
  [[ -n $version ]] || die "$target: no org.opencontainers.image.version label"
  ref=$IMAGE_REPO/$target:$version
  local args=(--set-platform linux/amd64)
  local e k v
  for e in "${base_cfg_env[@]}"; do args+=(--env "$e"); done
  while IFS=$'\t' read -r k v; do args+=(--env "$k=$v"); done < <(jq -r '.env | to_entries[] | [.key, .value] | @tsv' "$stage")
  while IFS=$'\t' read -r k v; do
    [[ $v != *,* ]] || die "$target: label $k has a comma, which crane --label would split"
    args+=(--label "$k=$v")
  done < <(jq -r '.labels | to_entries[] | [.key, .value] | @tsv' "$stage")
  local user workdir
  user=$(jq -r '.user' "$stage"); args+=(--user "${user:-$base_user}")
  workdir=$(jq -r '.workdir' "$stage"); args+=(--workdir "${workdir:-$base_workdir}")
  for v in $(jq -r '.exposed_ports[]' "$stage"); do args+=(--exposed-ports "$v"); done
  for v in $(jq -r '.entrypoint[]' "$stage"); do args+=(--entrypoint "$v"); done
  for v in $(jq -r '.cmd[]' "$stage"); do args+=(--cmd "$v"); done

  "$CRANE" append --oci-empty-base -f "$WORK/base.tar" -f "$WORK/$target.tar" \
    -t "$REG/$target:build" >/dev/null 2>>"$WORK/crane.log"
  "$CRANE" mutate "$REG/$target:build" "${args[@]}" -t "$ref" -o "$OUT/$target.tar" >/dev/null 2>>"$WORK/crane.log"
  log "$ref -> $OUT/$target.tar ($(du -h "$OUT/$target.tar" | cut -f1))"
}

# ------------------------------------------------------------ pause
build_pause() {
  local root=$WORK/pause-root
  mkdir -p "$root"
  install -m 0755 "$NODE_BIN/pause" "$root/pause"
  layer_tar "$root" "$WORK/pause.tar"
  "$CRANE" append --oci-empty-base -f "$WORK/pause.tar" -t "$REG/pause:build" >/dev/null 2>>"$WORK/crane.log"
  # As the upstream image: ENTRYPOINT ["/pause"], USER 65535:65535.
  "$CRANE" mutate "$REG/pause:build" --set-platform linux/amd64 --entrypoint /pause \
    --user 65535:65535 -t "$PAUSE_REF" -o "$OUT/pause.tar" >/dev/null 2>>"$WORK/crane.log"
  log "$PAUSE_REF -> $OUT/pause.tar ($(du -h "$OUT/pause.tar" | cut -f1))"
}

t0=$SECONDS
build_pause
for b in kss kss-operator; do
  [[ -x $KSS_BIN_DIR/$b ]] || die "$KSS_BIN_DIR/$b missing; build it: cargo build --release --locked -p kss-server -p kss-operator --bin kss --bin kss-operator"
done
build_base
build_target kss
build_target kss-operator
log "images ready in $((SECONDS - t0)) s"
echo "$OUT"
