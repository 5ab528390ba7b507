#!/usr/bin/env bash
# A real Docker engine for the scaling and healing tests, and the local images they run.
#
# Usage:
#   bash scripts/docker-engine.sh                 # the shared engine on /var/run/docker.sock + images
#   bash scripts/docker-engine.sh --private DIR   # a second, private engine rooted in DIR (socket DIR/docker.sock)
#
# Idempotent: every step checks first and does nothing when it is already done.
#   1. Installs Debian's docker.io (and busybox-static for the images) with apt-get when
#      dockerd is missing.
#   2. Starts dockerd in the background when `docker info` does not answer, with what this
#      sandbox allows: the vfs storage driver (no overlayfs inside the VM), no default
#      bridge and no iptables (no network namespace plumbing; containers that need the
#      network use `--network host`). Logs go to var/dockerd.log. Waits until it answers.
#   3. Builds the local images with `docker import` (no registry is reachable):
#
#      fcp-tiny:latest  (about 2 MB; keep it stable, the healing tests use it too)
#        /bin/busybox        Debian's statically linked busybox (busybox-static)
#        /bin/<applet>       a symlink to busybox for every applet: sh, sleep, httpd, nc, wget, ...
#        /etc/passwd, /etc/group   root only
#        /tmp /root /var/www /proc /sys /dev   empty
#        CMD ["/bin/sh"]
#        So `docker run fcp-tiny:latest sleep 600` or `httpd -f -p 8080 -h /var/www` work.
#
#      fcp-hostpython:latest  (fcp-tiny plus /lib -> usr/lib and /lib64 -> usr/lib64)
#        A shell for the host's Python: run it with the host's /usr, the Python install
#        and the repository bind-mounted read-only at the same paths, and `--network host`,
#        and the repository's .venv/bin/python runs a real Celery worker inside a real
#        container. Copying a Python install into the image instead would cost hundreds
#        of megabytes per container, because vfs copies the whole image for each one.
#
# The private mode starts a second engine (own data root, exec root, pidfile and socket)
# for tests that must stop an engine without disturbing anyone using the shared one.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var

log() { echo "docker-engine: $*" >&2; }

install_packages() {
  local wanted=()
  command -v dockerd >/dev/null 2>&1 || wanted+=(docker.io)
  # The images need a statically linked busybox (Debian's busybox is dynamic).
  dpkg -s busybox-static >/dev/null 2>&1 || wanted+=(busybox-static)
  ((${#wanted[@]} == 0)) && return 0
  log "installing ${wanted[*]}"
  # Other jobs on this machine may hold the dpkg lock for a while: wait for it.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${wanted[@]}" >/dev/null
}

# The Debian client (/usr/bin/docker) matches the Debian engine; a newer client earlier
# on PATH also works, it negotiates the API version down.
docker_cli() { command -v docker || echo /usr/bin/docker; }

engine_answers() { DOCKER_HOST="$1" "$(docker_cli)" info >/dev/null 2>&1; }

start_engine() {
  # $1 socket URL, $2 log file, then extra dockerd flags
  local host="$1" logfile="$2"
  shift 2
  if engine_answers "$host"; then
    return 0
  fi
  log "starting dockerd on $host (log: $logfile)"
  # setsid: the engine must outlive this script and the shell that called it.
  setsid dockerd \
    --host "$host" \
    --storage-driver vfs \
    --bridge none \
    --iptables=false \
    --ip6tables=false \
    --ip-masq=false \
    "$@" >>"$logfile" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    engine_answers "$host" && return 0
    sleep 0.5
  done
  log "dockerd did not answer within 60 s; last log lines:"
  tail -n 30 "$logfile" >&2
  return 1
}

build_images() {
  local host="$1"
  if DOCKER_HOST="$host" "$(docker_cli)" image inspect fcp-tiny:latest fcp-hostpython:latest >/dev/null 2>&1; then
    return 0
  fi
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev,usr,var/www}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  log "building fcp-tiny:latest"
  tar -C "$root" -c . | DOCKER_HOST="$host" "$(docker_cli)" import -c 'CMD ["/bin/sh"]' - fcp-tiny:latest >/dev/null
  ln -s usr/lib "$root/lib"
  ln -s usr/lib64 "$root/lib64"
  log "building fcp-hostpython:latest"
  tar -C "$root" -c . | DOCKER_HOST="$host" "$(docker_cli)" import -c 'CMD ["/bin/sh"]' - fcp-hostpython:latest >/dev/null
}

install_packages

if [[ "${1:-}" == "--private" ]]; then
  dir="${2:?usage: docker-engine.sh --private DIR}"
  mkdir -p "$dir/data" "$dir/exec"
  start_engine "unix://$dir/docker.sock" "$dir/dockerd.log" \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid"
  exit 0
fi

start_engine "unix:///var/run/docker.sock" "$PWD/var/dockerd.log"
build_images "unix:///var/run/docker.sock"
log "ready: $(DOCKER_HOST=unix:///var/run/docker.sock "$(docker_cli)" version --format '{{.Server.Version}}')"
