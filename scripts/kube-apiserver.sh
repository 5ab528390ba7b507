#!/usr/bin/env bash
# A real Kubernetes API server (and etcd) for the tests, built from Debian's sources.
#
# Usage:
#   bash scripts/kube-apiserver.sh build      # install build deps, build once, cache the binary
#   bash scripts/kube-apiserver.sh path       # print the cached binary's path (exit 1 if absent)
#
# No registry or release download is reachable here, and no package ships a
# kube-apiserver binary. Debian's source package `kubernetes` (1.20.5+really1.20.2)
# carries the full upstream 1.20.2 tree with vendor/, so we build it the way
# debian/rules does (GOPATH mode, Debian's golang-go 1.19), see ../shared/NOTES.md:
#
#   1. apt-get source --download-only, with a private deb-src list derived from the
#      machine's own debian.sources and private apt state/cache folders, so the
#      system's apt configuration is never touched.
#   2. Replace the vendored modern-go/reflect2 1.0.1 with Debian's 1.0.2: built with
#      1.0.1 by Go >= 1.18 the apiserver panics on its first CRD/JSON request.
#   3. CGO_ENABLED=0 make WHAT=cmd/kube-apiserver (about 11 minutes on 2 cores).
#
# The binary is cached outside the repository, keyed by version, so CI and later
# runs on this machine reuse it: $KUBE_CACHE_DIR (default /var/cache/fcp-kube).
# The tests start etcd and the apiserver themselves (tests/kube.py) on free ports.
set -euo pipefail

VERSION="1.20.2"
CACHE_DIR="${KUBE_CACHE_DIR:-/var/cache/fcp-kube}"
BINARY="$CACHE_DIR/kube-apiserver-$VERSION"

WORK=""  # the build's scratch folder; global, so the EXIT trap still sees it after build() returns

log() { echo "kube-apiserver: $*" >&2; }
cleanup() { [[ -z "$WORK" ]] || rm -rf "$WORK"; }

install_packages() {
  local wanted=()
  command -v etcd >/dev/null 2>&1 || wanted+=(etcd-server)
  command -v go >/dev/null 2>&1 || wanted+=(golang-go)
  [[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] || wanted+=(golang-github-modern-go-reflect2-dev)
  command -v make >/dev/null 2>&1 || wanted+=(make)
  command -v openssl >/dev/null 2>&1 || wanted+=(openssl)
  command -v rsync >/dev/null 2>&1 || wanted+=(rsync)
  dpkg -s dpkg-dev >/dev/null 2>&1 || wanted+=(dpkg-dev)
  ((${#wanted[@]} == 0)) && return 0
  log "installing ${wanted[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${wanted[@]}" >/dev/null
}

runtime_packages() {
  # What the tests need even when the binary is cached: etcd and openssl.
  local wanted=()
  command -v etcd >/dev/null 2>&1 || wanted+=(etcd-server)
  command -v openssl >/dev/null 2>&1 || wanted+=(openssl)
  ((${#wanted[@]} == 0)) && return 0
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${wanted[@]}" >/dev/null
}

fetch_source() {
  local work="$1" apt_dir="$1/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources"
  # The machine's own entries, as deb-src.
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$apt_dir/sources/src.sources"
  local opts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$apt_dir/sources"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
  )
  apt-get "${opts[@]}" update -qq
  (cd "$work" && apt-get "${opts[@]}" source --download-only kubernetes >/dev/null)
  (cd "$work" && dpkg-source --no-check -x kubernetes_*.dsc src >/dev/null)
}

build() {
  mkdir -p "$CACHE_DIR"
  # One build at a time per cache: a second caller waits, then finds the binary cached.
  exec 9>"$CACHE_DIR/.build.lock"
  flock 9
  if [[ -x "$BINARY" ]]; then
    log "cached: $BINARY"
    runtime_packages
    return 0
  fi
  install_packages
  WORK="$(mktemp -d /var/tmp/fcp-kube-build.XXXXXX)"
  trap cleanup EXIT
  local work="$WORK"
  log "fetching Debian's kubernetes source into $work"
  fetch_source "$work"
  local tree="$work/src"
  log "replacing vendored modern-go/reflect2 with Debian's 1.0.2"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$work/.go/src/k8s.io"
  ln -s "$tree" "$work/.go/src/k8s.io/kubernetes"
  log "building (about 11 minutes on 2 cores)"
  (
    cd "$work/.go/src/k8s.io/kubernetes"
    export GOPATH="$work/.go" GO111MODULE=off GOFLAGS="" CGO_ENABLED=0 GOCACHE="$work/.gocache"
    export KUBE_GIT_VERSION="v$VERSION" KUBE_GIT_TREE_STATE=clean
    make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
  )
  install -m 0755 "$work/.go/src/k8s.io/kubernetes/_output/local/bin/linux/$(dpkg --print-architecture)/kube-apiserver" \
    "$BINARY.tmp"
  mv "$BINARY.tmp" "$BINARY"
  log "built $BINARY"
}

case "${1:-build}" in
  build) build ;;
  path) [[ -x "$BINARY" ]] && echo "$BINARY" ;;
  *) echo "usage: $0 build|path" >&2; exit 2 ;;
esac
