# Shared by build-tools.sh and build-node.sh (sourced): a cached `go build` and the
# version stamp of Kubernetes binaries. The caller sets BIN_DIR, TOOLS_DIR and log().

# build <tools module dir> <output path relative to BIN_DIR> <package> <ldflags> [tags]
# Builds what is not in BIN_DIR yet, at low priority, into a temporary file first.
build() {
  local dir=$1 name=$2 pkg=$3 ldflags=$4 tags=${5:-}
  local out="$BIN_DIR/$name"
  if [[ -x "$out" ]]; then
    log "skip $name (cached in $BIN_DIR)"
    return 0
  fi
  log "build $name from $pkg ..."
  mkdir -p "$(dirname "$out")"
  local start=$SECONDS
  local tmp="$out.tmp.$$"
  if ! (cd "$TOOLS_DIR/$dir" && nice -n 15 go build -tags "$tags" -ldflags "$ldflags" -o "$tmp" "$pkg"); then
    rm -f "$tmp"
    log "FAILED to build $name"
    return 1
  fi
  mv -f "$tmp" "$out"
  log "built $name in $((SECONDS - start)) s"
}

# k8s_ldflags <version> <build date>: stamps both version packages, or the binaries
# report v0.0.0.
k8s_ldflags() {
  local version=$1 date=$2 major minor flags="-s -w" p
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$version -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  printf '%s' "$flags"
}
