"""Time `imgext extend` against raw daemon builds of the same Dockerfiles.

The raw side is what a user would do by hand: one build per Dockerfile, each
given `--build-arg base_image=<previous result>` (and the `user_id`, `group_id`
and extension args imgext passes), driven through the Engine API's `/build` as
`docker build` does (`version=2` for BuildKit, `version=1` for the classic
builder), chained build image first, then run image. imgext runs as its command
line, so its figures include Python's start-up; the raw builds are made from
this already running process, so theirs include no client start-up at all.

Cold runs pass no-cache to both sides; warm runs come after an untimed run
that fills the cache. Besides its total, imgext's own report gives the time its
Dockerfile builds took (the longer of its two parallel chains); the rest is
start-up, checks, tagging and writing the run image's sparse OCI layout, which
the raw side does not do. Run it with the project's venv:

    .venv/bin/python scripts/bench.py [--example tiny|bookworm|all]
        [--builder buildkit|classic|all] [--repeat N] [--markdown]

It creates tags under `imgext-bench/` and removes them when done, with the
images that its cold runs made.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests

from imgext import Daemon, ExtendOptions, Kind, KindPlan, plan

ROOT = Path(__file__).resolve().parent.parent
BENCH_REPOSITORY = "imgext-bench"
BUILDER_VERSIONS = {"buildkit": "2", "classic": "1"}


@dataclass(frozen=True)
class Example:
    """A `<layers>` directory to extend, and the app directory beside it."""

    name: str
    layers: Path
    app: Path
    what: str


@dataclass
class Result:
    """Median wall-clock seconds of one example, builder and cache state."""

    example: str
    builder: str
    cache: str
    imgext: list[float] = field(default_factory=list)
    builds: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)

    def row(self) -> tuple[str, ...]:
        imgext = statistics.median(self.imgext)
        builds = statistics.median(self.builds)
        raw = statistics.median(self.raw)
        return (
            self.example,
            self.builder,
            self.cache,
            f"{imgext:.2f}",
            f"{builds:.2f}",
            f"{raw:.2f}",
            f"{imgext / raw:.2f}",
            f"{builds / raw:.2f}",
        )


class Cleanup:
    """Tags and cold-run images made by this script, removed at the end."""

    def __init__(self, api: docker.APIClient) -> None:
        self.api = api
        self.tags: set[str] = set()
        self.images: list[str] = []

    def run(self) -> None:
        for tag in sorted(self.tags):
            self._remove(tag, noprune=True)
        # Newest first, so that each image is a leaf when its turn comes.
        for image in reversed(self.images):
            self._remove(image, noprune=False)

    def _remove(self, ref: str, *, noprune: bool) -> None:
        # Gone already, or still the parent of an image of someone else.
        with contextlib.suppress(docker.errors.APIError):
            self.api.remove_image(ref, noprune=noprune)


def tiny_example(root: Path) -> Example:
    """Three extensions on the busybox images: RUN, COPY, ENV in each kind."""
    layers = root / "tiny" / "layers"
    app = root / "tiny" / "app"
    app.mkdir(parents=True)
    (app / "index.txt").write_text("hello\n")
    generated = layers / "generated"
    ids = ["bench/one", "bench/two", "bench/three"]
    for number, extension in enumerate(ids, start=1):
        folder = generated / extension.replace("/", "_")
        for kind in ("build", "run"):
            context = folder / f"context.{kind}"
            context.mkdir(parents=True)
            (context / "data.bin").write_bytes(os.urandom(256 * 1024))
            (context / "config.txt").write_text(f"{extension} {kind}\n")
            label = "LABEL io.buildpacks.rebasable=true\n" if kind == "run" else ""
            (folder / f"{kind}.Dockerfile").write_text(
                textwrap.dedent(
                    f"""\
                    ARG base_image
                    FROM ${{base_image}}
                    ARG user_id
                    ARG group_id
                    ARG greeting
                    ENV BENCH_{number}=on BENCH_GREETING=${{greeting}}
                    USER root
                    RUN mkdir -p /opt/bench{number} \\
                     && echo "$BENCH_GREETING" >/opt/bench{number}/greeting
                    COPY data.bin config.txt /opt/bench{number}/
                    RUN cat /opt/bench{number}/config.txt >>/opt/bench.log
                    {label}USER ${{user_id}}:${{group_id}}
                    """
                )
            )
        (folder / "extend-config.toml").write_text(
            "".join(
                f'[[{kind}.args]]\nname = "greeting"\nvalue = "{kind} {number}"\n'
                for kind in ("build", "run")
            )
        )
    (layers / "group.toml").write_text(
        "".join(
            f'[[group-extensions]]\nid = "{i}"\nversion = "0.0.1"\napi = "0.10"\n'
            for i in ids
        )
    )
    (layers / "analyzed.toml").write_text(
        '[build-image]\nreference = "imgext-test/build:tiny"\n'
        '[run-image]\nreference = "imgext-test/run:tiny"\n'
    )
    return Example(
        "tiny",
        layers,
        app,
        "busybox images, 3 build + 3 run Dockerfiles (ENV, RUN, COPY of 256 KiB)",
    )


def bookworm_example() -> Example:
    return Example(
        "bookworm",
        ROOT / "examples" / "layers",
        ROOT / "examples" / "app",
        "the bundled example: apt-get install curl (build) and jq (run)",
    )


def run_imgext(
    example: Example, builder: str, *, nocache: bool, tags: str
) -> tuple[float, float, list[str]]:
    """Run the `imgext extend` command.

    Return its time, the time its builds took (the longer of the two chains,
    which run in parallel), and the images it made.
    """
    work = Path(tempfile.mkdtemp(prefix="imgext-bench-"))
    report = work / "report.json"
    command = [
        sys.executable,
        "-m",
        "imgext",
        "extend",
        "--layers",
        str(example.layers),
        "--app",
        str(example.app),
        "--builder",
        builder,
        "--build-tag",
        f"{tags}-build",
        "--run-tag",
        f"{tags}-run",
        "--log-level",
        "error",
        "--report",
        str(report),
        "--extended",
        str(work / "extended"),
    ]
    if nocache:
        command.append("--no-cache")
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"imgext failed ({done.returncode}):\n{done.stderr}")
    data = json.loads(report.read_text())
    shutil.rmtree(work)
    made = []
    chains = [0.0]
    for kind in ("build", "run"):
        if data[kind]:
            made += [step["image"] for step in data[kind]["steps"]]
            made.append(data[kind]["image"])
            chains.append(sum(step["seconds"] for step in data[kind]["steps"]))
    return seconds, max(chains), made


def context_tar(context: Path, dockerfile: Path) -> bytes:
    """The context as `docker build` sends it: the folder plus the Dockerfile."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        # Names as the CLI writes them, `data.bin` not `./data.bin`: the classic
        # builder's cache key for COPY includes the name in the archive.
        for child in sorted(context.iterdir()):
            archive.add(child, arcname=child.name, filter=_as_root)
        archive.add(dockerfile, arcname=".bench.Dockerfile", filter=_as_root)
    return buffer.getvalue()


def _as_root(member: tarfile.TarInfo) -> tarfile.TarInfo:
    # Whole seconds, as the Docker CLI sends them: a fractional mtime would need
    # a PAX header, which BuildKit's context reader in dockerd 20.10 misreads.
    member.mtime = int(member.mtime)
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON messages of a build stream, however the chunks split them."""
    decoder = json.JSONDecoder()
    buffer = ""
    for chunk in response.iter_content(chunk_size=None, decode_unicode=False):
        buffer += chunk.decode("utf-8", "replace")
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                message, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                break
            buffer = buffer[end:]
            yield message


def raw_build(
    api: docker.APIClient,
    tar: bytes,
    *,
    buildargs: dict[str, str],
    tag: str,
    builder: str,
    nocache: bool,
) -> str:
    """One POST /build, as `docker build -t TAG --build-arg ...` makes it."""
    params = {
        "t": tag,
        "dockerfile": ".bench.Dockerfile",
        "buildargs": json.dumps(buildargs),
        "nocache": "1" if nocache else "0",
        "rm": "1",
        "version": BUILDER_VERSIONS[builder],
    }
    url = f"{api.base_url}/v{api.api_version}/build"
    headers = {"Content-Type": "application/x-tar"}
    image: str | None = None
    with api.post(url, params=params, data=tar, headers=headers, stream=True) as r:
        r.raise_for_status()
        for message in events(r):
            if "error" in message or "errorDetail" in message:
                raise SystemExit(f"raw build of {tag} failed: {message}")
            aux = message.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                image = str(aux["ID"])
    if image is None:
        raise SystemExit(f"raw build of {tag} gave no image ID")
    return image


def user_of(api: docker.APIClient, ref: str) -> tuple[str, str]:
    info: dict[str, Any] = api.inspect_image(ref)  # type: ignore[no-untyped-call]
    user = str(info["Config"].get("User") or "")
    uid, _, gid = user.partition(":")
    return uid, gid


def run_raw(
    api: docker.APIClient,
    plans: list[KindPlan],
    builder: str,
    *,
    nocache: bool,
    cleanup: Cleanup,
) -> tuple[float, list[str]]:
    """Build every Dockerfile by hand, build chain then run chain; time it all."""
    run_id = uuid.uuid4().hex[:8]
    made: list[str] = []
    began = time.monotonic()
    for kind_plan in plans:
        previous = kind_plan.base
        uid, gid = user_of(api, previous)
        for index, step in enumerate(kind_plan.dockerfiles, start=1):
            tag = f"{BENCH_REPOSITORY}/raw-{run_id}-{kind_plan.kind}:{index}"
            cleanup.tags.add(tag)
            buildargs = {
                "build_id": str(uuid.uuid4()),
                "user_id": uid,
                "group_id": gid,
                **dict(step.args),
                "base_image": previous,
            }
            tar = context_tar(step.context, step.path)
            made.append(
                raw_build(
                    api,
                    tar,
                    buildargs=buildargs,
                    tag=tag,
                    builder=builder,
                    nocache=nocache,
                )
            )
            previous = tag
            uid, gid = user_of(api, tag)
    return time.monotonic() - began, made


def bench(
    api: docker.APIClient,
    example: Example,
    builder: str,
    repeat: int,
    cleanup: Cleanup,
) -> list[Result]:
    plans = plan(
        ExtendOptions(
            layers=example.layers,
            app=example.app,
            kinds=(Kind.BUILD, Kind.RUN),
        )
    )
    tags = f"{BENCH_REPOSITORY}/{example.name}:{builder}"
    cleanup.tags.update({f"{tags}-build", f"{tags}-run"})
    cold = Result(example.name, builder, "cold")
    warm = Result(example.name, builder, "warm")
    # Fill the cache for the warm runs; neither side is timed here.
    run_imgext(example, builder, nocache=False, tags=tags)
    run_raw(api, plans, builder, nocache=False, cleanup=cleanup)
    for round_ in range(repeat):
        # Alternate which side goes first, so that neither always meets a
        # daemon the other has just warmed up or slowed down.
        sides = ["imgext", "raw"] if round_ % 2 == 0 else ["raw", "imgext"]
        for nocache, result in ((True, cold), (False, warm)):
            for side in sides:
                if side == "imgext":
                    seconds, builds, made = run_imgext(
                        example, builder, nocache=nocache, tags=tags
                    )
                    result.imgext.append(seconds)
                    result.builds.append(builds)
                else:
                    seconds, made = run_raw(
                        api, plans, builder, nocache=nocache, cleanup=cleanup
                    )
                    result.raw.append(seconds)
                if nocache:
                    # Images no-cache builds made are this script's alone.
                    cleanup.images.extend(made)
            print(
                f"  {example.name} {builder} {result.cache} round {round_ + 1}: "
                f"imgext {result.imgext[-1]:.2f}s, raw {result.raw[-1]:.2f}s",
                file=sys.stderr,
                flush=True,
            )
    return [cold, warm]


def print_table(results: list[Result], *, markdown: bool) -> None:
    header = (
        "example",
        "builder",
        "cache",
        "imgext s",
        "its builds s",
        "raw s",
        "imgext/raw",
        "builds/raw",
    )
    rows = [header, *(r.row() for r in results)]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows[1:]:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        print("  ".join(cell.ljust(width) for cell, width in cells).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", choices=["tiny", "bookworm", "all"], default="all")
    parser.add_argument(
        "--builder", choices=["buildkit", "classic", "all"], default="all"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (3)")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args()
    # The daemon imgext itself would use (DOCKER_HOST, else the docker context).
    api = Daemon.connect().client
    builders = ["buildkit", "classic"] if args.builder == "all" else [args.builder]
    cleanup = Cleanup(api)
    results: list[Result] = []
    # Other work on the machine slows both sides, though not always alike.
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="imgext-bench-") as temporary:
        examples = []
        if args.example in ("tiny", "all"):
            examples.append(tiny_example(Path(temporary)))
        if args.example in ("bookworm", "all"):
            examples.append(bookworm_example())
        try:
            for example in examples:
                print(f"{example.name}: {example.what}", file=sys.stderr)
                for builder in builders:
                    results += bench(api, example, builder, args.repeat, cleanup)
        finally:
            cleanup.run()
    version = api.version()
    print(
        f"median of {args.repeat} runs; dockerd {version['Version']}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d', time.gmtime())}, "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print_table(results, markdown=args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
