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

# A live dockerd (not a zombie) with this pid?
dockerd_alive() {
  local pid="$1"
  [[ -r "/proc/$pid/stat" ]] || return 1
  [[ "$(cut -d' ' -f3 "/proc/$pid/stat")" != Z ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]
}

wait_until_answers() {
  local host="$1"
  for _ in $(seq 1 120); do
    engine_answers "$host" && return 0
    sleep 0.5
  done
  return 1
}

# A containerd left running by a dockerd that was killed holds its socket, and a new
# dockerd then times out waiting for its own containerd: stop the orphan first.
stop_orphan_containerd() {
  local pidfile="$1/containerd/containerd.pid" pid
  [[ -s "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  if [[ -r "/proc/$pid/comm" && "$(cat "/proc/$pid/comm")" == containerd ]]; then
    log "stopping the orphaned containerd $pid"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do [[ -d "/proc/$pid" ]] || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

start_engine() {
  # $1 socket URL, $2 log file, $3 pidfile, $4 exec root, then extra dockerd flags
  local host="$1" logfile="$2" pidfile="$3" exec_root="$4"
  shift 4
  if engine_answers "$host"; then
    return 0
  fi
  if [[ -s "$pidfile" ]]; then
    if dockerd_alive "$(cat "$pidfile")"; then
      # Still starting (or stopping): give it the same minute a fresh start gets.
      log "dockerd $(cat "$pidfile") is running but not answering yet; waiting"
      wait_until_answers "$host" && return 0
      log "dockerd $(cat "$pidfile") does not answer on $host"
      return 1
    fi
    # Left by a dockerd that was killed (e.g. with the session that started it):
    # dockerd refuses to start while it exists.
    log "removing the stale pidfile $pidfile"
    rm -f "$pidfile"
  fi
  stop_orphan_containerd "$exec_root"
  log "starting dockerd on $host (log: $logfile)"
  # setsid: the engine must outlive this script and the shell that called it.
  setsid dockerd \
    --host "$host" \
    --storage-driver vfs \
    --bridge none \
    --iptables=false \
    --ip6tables=false \
    --ip-masq=false \
    --pidfile "$pidfile" \
    --exec-root "$exec_root" \
    "$@" >>"$logfile" 2>&1 </dev/null &
  wait_until_answers "$host" && return 0
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
  start_engine "unix://$dir/docker.sock" "$dir/dockerd.log" "$dir/docker.pid" "$dir/exec" --data-root "$dir/data"
  exit 0
fi

start_engine "unix:///var/run/docker.sock" "$PWD/var/dockerd.log" /var/run/docker.pid /var/run/docker
build_images "unix:///var/run/docker.sock"
log "ready: $(DOCKER_HOST=unix:///var/run/docker.sock "$(docker_cli)" version --format '{{.Server.Version}}')"
