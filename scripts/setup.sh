#!/usr/bin/env bash
# Make this machine ready for imgext's demo and tests, once: Python deps in
# .venv, a running Docker engine, and the locally made base images.
# Safe to run again; every step checks before it acts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import imgext, pytest, hypothesis' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing imgext and its test dependencies"
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing $*: install it (needs root and apt-get)"; exit 1
  fi
  if [ ! -f /tmp/.imgext-apt-updated ]; then
    apt-get update -qq && touch /tmp/.imgext-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need_cmd() {  # need_cmd COMMAND PACKAGE
  command -v "$1" >/dev/null || { log "installing $2"; apt_install "$2"; }
}

need_cmd debootstrap debootstrap
need_cmd busybox busybox-static
need_cmd skopeo skopeo
need_cmd docker-registry docker-registry
need_cmd htpasswd apache2-utils

if ! docker info >/dev/null 2>&1; then
  need_cmd dockerd docker.io
  if [ -z "${DOCKER_HOST:-}" ]; then
    log "starting dockerd"
    nohup dockerd >/var/log/imgext-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 || { log "the Docker daemon did not come up"; exit 1; }
fi

"$here/scripts/test-images.sh"
