"""Time writing the extended run image's sparse OCI layout against `docker save`.

Makes (once) `imgext-bench/run-fat:latest`, the bookworm run image plus 120 MB
of random data, then, each round, extends it with one Dockerfile that adds a
few MB (no cache, so the layer is new each round) and times:

- imgext's layout writer with the save transfer: one streamed `docker save`,
  base layers read past, the new one gzipped into the layout;
- imgext's layout writer with the push transfer: the daemon pushes to a
  registry inside imgext that claims the blobs the daemon asks about, so only
  the new layer crosses. The daemon knows the base's digests from one real
  push of the base to Debian's `docker-registry` (as it would from pulling it),
  made untimed beforehand;
- `docker save -o FILE` of the extended image: saving its layers on disk, the
  way an earlier daemon-based prototype did;
- `docker save >/dev/null`: the cost of the stream alone.

    .venv/bin/python scripts/bench_export.py [--repeat N] [--markdown]

Tags it makes under `imgext-bench/` (except the fat base image, kept for the
next run) are removed when done.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker

from imgext import Daemon, ExtendOptions, ImageReport, extend
from imgext._export import write_run_layout
from imgext._publish import push

FAT = "imgext-bench/run-fat:latest"
FAT_DOCKERFILE = """\
FROM imgext-test/run:bookworm
USER root
RUN head -c 120000000 /dev/urandom > /opt/fat.bin
USER 1000:1000
"""
EXTENSION = """\
ARG base_image
FROM ${base_image}
USER root
RUN head -c 4000000 /dev/urandom > /opt/extension.bin \\
 && mkdir -p /opt/ext && seq 1 100000 > /opt/ext/numbers.txt
LABEL io.buildpacks.rebasable=true
USER 1000:1000
"""


def ensure_fat_image(api: Any) -> None:
    try:
        api.inspect_image(FAT)
        return
    except docker.errors.ImageNotFound:
        pass
    print(f"making {FAT} (once)")
    subprocess.run(
        ["docker", "build", "-q", "-t", FAT, "-"],
        input=FAT_DOCKERFILE.encode(),
        check=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        stdout=subprocess.DEVNULL,
    )


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return times


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def real_registry(root: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = root / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    daemon = Daemon.connect()
    api: Any = daemon.client
    ensure_fat_image(api)
    work = Path(tempfile.mkdtemp(prefix="imgext-bench-export-"))
    tag = f"imgext-bench/run-fat:extended-{uuid.uuid4().hex[:8]}"
    layers = work / "layers"
    (layers / "generated" / "bench_fat").mkdir(parents=True)
    (layers / "group.toml").write_text(
        '[[group-extensions]]\nid = "bench/fat"\nversion = "0.0.1"\napi = "0.10"\n'
    )
    (layers / "analyzed.toml").write_text(f'[run-image]\nreference = "{FAT}"\n')
    (layers / "generated" / "bench_fat" / "run.Dockerfile").write_text(EXTENSION)
    (work / "app").mkdir()
    saved = work / "saved.tar"
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    sizes: dict[str, int] = {}

    rounds: list[ImageReport] = []

    def layout(transfer: str) -> Callable[[], object]:
        def write() -> None:
            os.environ["IMGEXT_EXPORT_TRANSFER"] = transfer
            out = work / f"out-{transfer}"
            shutil.rmtree(out, ignore_errors=True)
            write_run_layout(daemon, rounds[-1], out)
            sizes[f"imgext layout, {transfer}"] = tree_size(out)

        return write

    def save_to_disk() -> None:
        subprocess.run(["docker", "save", "-o", str(saved), tag], check=True)
        sizes["docker save -o FILE"] = saved.stat().st_size
        saved.unlink()

    def save_to_null() -> None:
        with open(os.devnull, "wb") as null:
            subprocess.run(["docker", "save", tag], check=True, stdout=null)
        sizes["docker save >/dev/null"] = 0

    actions: dict[str, Callable[[], object]] = {
        METHODS[0]: layout("save"),
        METHODS[1]: layout("push"),
        METHODS[2]: save_to_disk,
        METHODS[3]: save_to_null,
    }
    try:
        with real_registry(work) as host:
            # What pulling the base from a registry would have taught the daemon.
            push(daemon, FAT, f"{host}/bench/run-fat:base")
        for _ in range(args.repeat):
            # A fresh extension layer each round: once pushed, a layer's digest
            # is known to the daemon, and the push transfer would not get it.
            report = extend(
                ExtendOptions(
                    layers=layers, app=work / "app", run_tag=tag, no_cache=True
                )
            ).run
            assert report is not None
            rounds.append(report)
            for name, action in actions.items():
                times[name] += timed(action, 1)
        image = api.inspect_image(tag)
        base = api.inspect_image(FAT)
    finally:
        os.environ.pop("IMGEXT_EXPORT_TRANSFER", None)
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(docker.errors.APIError):
            api.remove_image(tag, noprune=True)

    new_layers = len(image["RootFS"]["Layers"]) - len(base["RootFS"]["Layers"])
    print(
        f"extended run image {image['Size'] / 1e6:.0f} MB ({new_layers} new "
        f"layer(s) on {FAT}), {args.repeat} round(s), median seconds:"
    )
    if args.markdown:
        print("\n| method | seconds (median) | written to disk |")
        print("|---|---:|---:|")
    for name in METHODS:
        median = statistics.median(times[name])
        if args.markdown:
            print(f"| {name} | {median:.2f} | {sizes[name] / 1e6:.1f} MB |")
        else:
            print(f"  {name:<30} {median:7.2f} s  {sizes[name] / 1e6:8.1f} MB")


METHODS = (
    "imgext layout, save",
    "imgext layout, push",
    "docker save -o FILE",
    "docker save >/dev/null",
)


if __name__ == "__main__":
    main()
