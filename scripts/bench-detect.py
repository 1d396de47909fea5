"""Time detect plus generate of the bundled example's three extensions.

Two paths: the extensions and buildpack as host folders (executables run as
host processes), and a builder image that carries them (executables run in one
container of the builder, through the Engine API). The figure is imgext's own
wall time for the whole phase pair, container start and removal included;
`imgext detect` as a command adds Python's start-up on top. The goal is under
2 s for the builder path. Run it with the project's venv:

    .venv/bin/python scripts/bench-detect.py [--repeat N] [--base IMAGE]

It makes one builder image under `imgext-bench/` and removes it when done.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import docker

from imgext import Daemon
from imgext._prepare import PrepareOptions, prepare
from imgext._runner import wait_for_removals

HERE = Path(__file__).resolve().parent.parent
EXAMPLES = HERE / "examples"


def builder_context(base: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dockerfile = (
            f"FROM {base}\nUSER root\nCOPY cnb /cnb\nRUN chmod -R a+rX /cnb\n"
            "USER 1000:1000\n"
        ).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(EXAMPLES / "extensions", "cnb/extensions")
        tar.add(EXAMPLES / "buildpacks", "cnb/buildpacks")
        tar.add(EXAMPLES / "order.toml", "cnb/order.toml")
    return buffer.getvalue()


def time_once(builder: str | None, daemon: Daemon) -> tuple[float, float]:
    """Seconds of detect plus generate, and until the builder container is gone
    (which `imgext detect` waits for before it exits)."""
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as layers:
        prepared = prepare(
            PrepareOptions(
                app=EXAMPLES / "app",
                layers=Path(layers),
                builder=builder,
                extensions=EXAMPLES / "extensions",
                buildpacks=EXAMPLES / "buildpacks",
                order=None if builder else EXAMPLES / "order.toml",
                platform=EXAMPLES / "platform",
            ),
            daemon=daemon,
        )
    assert len(prepared.detected.extensions) == 3, prepared.detected
    wait_for_removals()
    return prepared.seconds, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--base", default="imgext-test/build:tiny")
    args = parser.parse_args()
    logging.getLogger("imgext").setLevel(logging.ERROR)
    client = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
    tag = f"imgext-bench/detect-{uuid.uuid4().hex[:8]}:builder"
    for event in client.build(
        fileobj=io.BytesIO(builder_context(args.base)),
        custom_context=True,
        tag=tag,
        rm=True,
        decode=True,
    ):
        if "error" in event:
            print(event["error"], file=sys.stderr)
            return 1
    daemon = Daemon.connect()
    try:
        time_once(tag, daemon)  # the first container start warms the daemon
        print(f"detect + generate, 3 extensions, {args.repeat} runs each")
        print(f"{'path':<16} {'min':>7} {'median':>7} {'max':>7}  until cleaned up")
        for name, builder in (("host folders", None), ("builder image", tag)):
            runs = [time_once(builder, daemon) for _ in range(args.repeat)]
            times = [phase for phase, _ in runs]
            total = statistics.median(whole for _, whole in runs)
            print(
                f"{name:<16} {min(times):>6.2f}s {statistics.median(times):>6.2f}s "
                f"{max(times):>6.2f}s  {total:.2f}s (median)"
            )
    finally:
        wait_for_removals()
        client.remove_image(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
