#!/usr/bin/env bash
# The one-command path: make a builder image that carries the example's
# extensions and buildpack (/cnb/extensions, /cnb/buildpacks, /cnb/order.toml),
# then let `imgext extend --builder IMAGE` run detect and generate inside it
# and extend both images. Sets the machine up first, once.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

builder=imgext-example/builder:bookworm
build_tag=imgext-example/build:one-command
run_tag=imgext-example/run:one-command

section() { printf '\n== %s\n' "$*"; }

"$here/scripts/setup.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

section "builder image $builder"
mkdir -p "$work/context/cnb"
cp -R examples/extensions examples/buildpacks examples/order.toml "$work/context/cnb/"
cat >"$work/context/cnb/run.toml" <<'TOML'
[[images]]
image = "imgext-test/run:bookworm"

[[images]]
image = "imgext-test/run-alt:bookworm"
TOML
cat >"$work/context/Dockerfile" <<'DOCKERFILE'
FROM imgext-test/build:bookworm
USER root
COPY cnb /cnb
RUN chmod -R a+rX /cnb
USER 1000:1000
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "$builder" "$work/context" >/dev/null
echo "$builder"

section "imgext detect --builder $builder (what the lifecycle's detector and generator would write)"
.venv/bin/imgext detect --app examples/app --builder "$builder" \
  --platform examples/platform --layers "$work/layers"
find "$work/layers" -type f | sed "s|$work/||" | sort

section "imgext extend --builder $builder (detect, generate and extend in one go)"
.venv/bin/imgext extend --app examples/app --builder "$builder" \
  --platform examples/platform \
  --build-tag "$build_tag" --run-tag "$run_tag" --report "$work/report.json"

section "extended build image $build_tag: user id, then curl"
docker run --rm "$build_tag" sh -c 'id -u; curl --version | head -1'

section "extended run image $run_tag: user id, jq, the switched run image"
docker run --rm "$run_tag" sh -c 'id -u; jq --version; cat /etc/imgext-run-image'
