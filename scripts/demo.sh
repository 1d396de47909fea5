#!/usr/bin/env bash
# Run `imgext extend` on the bundled example (examples/layers, as the generate
# phase of three sample extensions leaves it) and show that the extended images
# are what the extensions asked for. Sets the machine up first, once.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

build_tag=imgext-example/build:latest
run_tag=imgext-example/run:latest

section() { printf '\n== %s\n' "$*"; }

"$here/scripts/setup.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
report=$work/report.json

section "imgext extend --layers examples/layers"
.venv/bin/imgext extend \
  --layers examples/layers \
  --app examples/app \
  --build-tag "$build_tag" \
  --run-tag "$run_tag" \
  --report "$report" \
  --extended "$work/extended"

section "extended build image $build_tag: user id, then curl (samples/curl)"
docker run --rm "$build_tag" sh -c 'id -u; curl --version | head -1'

section "extended run image $run_tag: user id, jq (samples/jq), the switched run image"
docker run --rm "$run_tag" sh -c \
  'id -u; jq --version; cat /etc/imgext-run-image /etc/imgext-example/jq-defaults.txt'

section "run image config"
docker image inspect "$run_tag" --format \
  'io.buildpacks.rebasable={{index .Config.Labels "io.buildpacks.rebasable"}} user={{.Config.User}}'

section "the extended run image's sparse OCI layout, for the exporter"
( cd "$work" && find extended -maxdepth 3 | sort )

section "report"
cat "$report"
