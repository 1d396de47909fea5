#!/usr/bin/env bash
# Make this machine ready for imgext's demo and tests, once: the tools the
# tests use, Python deps in .venv, a running Docker engine, and the locally
# made base images. Safe to run again, and from several shells at once: every
# step checks before it acts, under one lock.
# Missing Debian packages are installed with apt-get when run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing $*: install it (this script can, as root with apt-get)"
  fi
  log "installing $* with apt-get"
  # The package lists are refreshed once per boot, and again if an install
  # fails on lists that went stale since.
  if [ ! -f /tmp/.imgext-apt-updated ]; then
    apt-get update -qq && touch /tmp/.imgext-apt-updated
  fi
  if ! apt_get_install "$@"; then
    apt-get update -qq
    apt_get_install "$@"
  fi
}

apt_get_install() {
  # With recommends: docker.io needs apparmor on hosts that enable AppArmor.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null >/dev/null
}

need_cmd() {  # need_cmd COMMAND PACKAGE
  command -v "$1" >/dev/null || apt_install "$2"
}

static_busybox() {
  local path
  path=$(command -v busybox) || return 1
  # The tiny test image copies busybox into an empty image: it must be static.
  ! ldd "$path" >/dev/null 2>&1
}

# One shell at a time installs, starts the daemon and makes the images; the
# others wait for it, then find everything done.
need_cmd flock util-linux
exec 9>"${IMGEXT_LOCK:-/tmp/imgext-setup.lock}"
flock 9

need_cmd python3 python3
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
need_cmd debootstrap debootstrap
static_busybox || apt_install busybox-static
need_cmd skopeo skopeo
need_cmd docker-registry docker-registry
need_cmd htpasswd apache2-utils

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import imgext, pytest, hypothesis' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing imgext and its test dependencies into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' </dev/null
  touch .venv/.installed
fi

daemon_up() { docker info >/dev/null 2>&1; }
dockerd_running() {  # without procps, which a minimal Debian lacks
  grep -qx dockerd /proc/[0-9]*/comm 2>/dev/null
}
wait_daemon() {
  for _ in $(seq 60); do daemon_up && return 0; sleep 1; done
  return 1
}

if ! daemon_up; then
  need_cmd docker docker.io
  need_cmd dockerd docker.io
  if [ -n "${DOCKER_HOST:-}" ]; then
    die "cannot reach the Docker daemon at DOCKER_HOST=$DOCKER_HOST"
  fi
  if dockerd_running; then
    log "dockerd runs already; waiting for it to answer"
  elif [ "$(id -u)" != 0 ]; then
    die "the Docker daemon is not running, and starting it needs root"
  else
    log "starting dockerd (log: /var/log/imgext-dockerd.log)"
    # Not holding the lock: dockerd outlives this script.
    nohup dockerd >/var/log/imgext-dockerd.log 2>&1 </dev/null 9>&- &
  fi
  wait_daemon || die "the Docker daemon did not come up; see /var/log/imgext-dockerd.log"
fi

"$here/scripts/test-images.sh"
