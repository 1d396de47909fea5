#!/usr/bin/env bash
# Run imgext's tests against the local Docker daemon; arguments go to pytest.
# Sets the machine up first, once (Python deps, dockerd, base images).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

"$here/scripts/setup.sh"
exec .venv/bin/pytest "$@"
