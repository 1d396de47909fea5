#!/usr/bin/env bash
# Make the base images that the demo, tests and benchmark use, without any
# registry: a Debian bookworm root file system from debootstrap, and a tiny
# busybox image. Each image is made only when the daemon lacks it; the
# debootstrap tree is cached in $IMGEXT_CACHE (default /var/cache/imgext).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${IMGEXT_CACHE:-/var/cache/imgext}
mirror=${IMGEXT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"

log() { printf '[images] %s\n' "$*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
quiet() {  # run a command; show its output only if it fails
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    log "failed: $*"
    return 1
  fi
}

if ! have imgext-test/bookworm:base; then
  if [ ! -s "$cache/bookworm-minbase.tar" ]; then
    log "debootstrap bookworm (about 40 s, once)"
    root=$(mktemp -d)
    if ! debootstrap --variant=minbase bookworm "$root" "$mirror" \
        >"$cache/debootstrap.log" 2>&1; then
      tail -n 20 "$cache/debootstrap.log" >&2
      rm -rf "$root"
      log "debootstrap failed; the whole log is $cache/debootstrap.log"
      exit 1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$cache/bookworm-minbase.tar.part" .
    mv "$cache/bookworm-minbase.tar.part" "$cache/bookworm-minbase.tar"
    rm -rf "$root"
  fi
  log "importing imgext-test/bookworm:base"
  docker import "$cache/bookworm-minbase.tar" imgext-test/bookworm:base >/dev/null
fi

if ! have imgext-test/busybox:base; then
  log "making imgext-test/busybox:base"
  ctx=$(mktemp -d)
  cp "$(command -v busybox)" "$ctx/busybox"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc /tmp /home/cnb && chmod 1777 /tmp \
 && echo 'root:x:0:0:root:/root:/bin/sh' >/etc/passwd \
 && echo 'cnb:x:1000:1000:cnb:/home/cnb:/bin/sh' >>/etc/passwd \
 && echo 'root:x:0:' >/etc/group && echo 'cnb:x:1000:' >>/etc/group \
 && chown 1000:1000 /home/cnb
DOCKERFILE
  DOCKER_BUILDKIT=0 quiet docker build -q -t imgext-test/busybox:base "$ctx"
  rm -rf "$ctx"
fi

# Stack images: the same user (cnb, 1000:1000) in build and run images, as
# buildpacks stacks have it. The run image starts rebasable. Like Debian's own
# container images, apt keeps no package caches (/var/cache/apt/*.bin would
# add some 80 MB to every layer that runs apt-get update). Bookworm images
# carry the recipe's version and are made again when it changes.
recipe=2
empty=$(mktemp -d)
dockerfile=$(mktemp)
trap 'rm -rf "$empty" "$dockerfile"' EXIT
make_image() {  # make_image TAG FROM EXTRA-LINES [RECIPE]
  if [ -n "${4:-}" ]; then
    [ "$(docker image inspect -f '{{index .Config.Labels "imgext.test.recipe"}}' \
      "$1" 2>/dev/null)" = "$4" ] && return 0
  else
    have "$1" && return 0
  fi
  log "making $1"
  printf 'FROM %s\n%b' "$2" "$3${4:+LABEL imgext.test.recipe=$4\n}" >"$dockerfile"
  DOCKER_BUILDKIT=0 quiet docker build -q -t "$1" -f "$dockerfile" "$empty"
}
apt_conf=/etc/apt/apt.conf.d/90imgext-no-cache
users="RUN groupadd -g 1000 cnb && useradd -u 1000 -g 1000 -m -s /bin/bash cnb \
 && echo 'Dir::Cache::pkgcache \"\";' >$apt_conf \
 && echo 'Dir::Cache::srcpkgcache \"\";' >>$apt_conf \
 && echo 'DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb || true\"; };' >>$apt_conf\n"
make_image imgext-test/build:bookworm imgext-test/bookworm:base \
  "${users}ENV CNB_USER_ID=1000 CNB_GROUP_ID=1000\nLABEL io.buildpacks.base.id=imgext.test.bookworm\nUSER 1000:1000\n" \
  "$recipe"
make_image imgext-test/run:bookworm imgext-test/bookworm:base \
  "${users}LABEL io.buildpacks.base.id=imgext.test.bookworm io.buildpacks.rebasable=true\nUSER 1000:1000\n" \
  "$recipe"
make_image imgext-test/run-alt:bookworm imgext-test/bookworm:base \
  "${users}RUN echo alt >/etc/imgext-run-image\nLABEL io.buildpacks.base.id=imgext.test.bookworm.alt\nUSER 1000:1000\n" \
  "$recipe"
make_image imgext-test/build:tiny imgext-test/busybox:base \
  "ENV CNB_USER_ID=1000 CNB_GROUP_ID=1000\nUSER 1000:1000\n"
make_image imgext-test/run:tiny imgext-test/busybox:base \
  "LABEL io.buildpacks.rebasable=true\nUSER 1000:1000\n"
make_image imgext-test/run-alt:tiny imgext-test/busybox:base \
  "RUN echo alt >/etc/imgext-run-image\nUSER 1000:1000\n"
log "base images ready"
