"""`imgext extend` against the real Docker daemon, with the tiny test images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

import imgext._extend
from imgext import (
    Builder,
    ExtendOptions,
    ImageMissingError,
    Kind,
    StepFailedError,
    extend,
)
from imgext._events import Event, StepFinished, StepStarted

from ..conftest import BUILD_TINY, RUN_ALT_TINY, RUN_TINY, Layers

pytestmark = pytest.mark.daemon

BUILDERS = [Builder.BUILDKIT, Builder.CLASSIC]


def options(layers: Layers, prefix: str, **changes: Any) -> ExtendOptions:
    values: dict[str, Any] = {
        "layers": layers.root,
        "app": layers.app,
        "platform_api": layers.platform_api,
        "build_tag": f"{prefix}-build:latest",
        "run_tag": f"{prefix}-run:latest",
    }
    values.update(changes)
    return ExtendOptions(**values)


def run_in(image: str, command: str) -> str:
    return subprocess.run(
        ["docker", "run", "--rm", image, "sh", "-c", command],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def config(api: docker.APIClient, image: str) -> dict[str, Any]:
    return api.inspect_image(image)["Config"]  # type: ignore[no-any-return]


def temp_tags(api: docker.APIClient, repository: str = "imgext-tmp") -> list[str]:
    images = api.images(filters={"reference": f"{repository}/*"})
    return [t for i in images for t in i.get("RepoTags") or []]


@pytest.fixture(autouse=True)
def no_temp_tags_left(
    docker_api: docker.APIClient, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every test here must leave no temporary tag of imgext behind.

    Runs in this process use a repository of the test's own, so that other
    imgext runs on a shared daemon cannot be mistaken for a leak; runs of the
    CLI in a subprocess use the real one and are checked against a snapshot.
    """
    own = f"imgext-tmp-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(imgext._extend, "TEMP_REPOSITORY", own)
    before = set(temp_tags(docker_api))
    yield
    assert temp_tags(docker_api, own) == []
    assert set(temp_tags(docker_api)) - before == set()


def containers_running(api: docker.APIClient, marker: str) -> list[str]:
    found = api.containers(all=True)
    return [c["Id"] for c in found if marker in (c.get("Command") or "")]


@pytest.mark.parametrize("builder", BUILDERS)
def test_chain_of_build_dockerfiles_gets_the_contract_args(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient, builder: Builder
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/first",
        build="""
        ARG base_image
        FROM ${base_image}
        ARG build_id=none
        ARG user_id
        ARG group_id
        ARG greeting
        USER root
        RUN echo "$build_id" > /first-id && echo "$user_id:$group_id" > /first-user \\
         && echo "$greeting" > /greeting
        USER 1234:5678
        """,
        build_args={"greeting": "hello world"},
    )
    layers.extension(
        "test/second",
        build="""
        ARG base_image
        FROM ${base_image}
        ARG build_id=none
        ARG user_id
        ARG group_id
        USER root
        RUN echo "$build_id" > /second-id && echo "$user_id:$group_id" > /second-user
        USER ${user_id}:${group_id}
        ENV FROM_SECOND=yes
        """,
    )
    report = extend(options(layers, unique_tag, builder=builder))
    assert report.run is None
    assert report.build is not None
    assert report.builder == builder
    tag = report.build.tag
    assert tag == f"{unique_tag}-build:latest"
    out = run_in(
        tag,
        "cat /first-id /second-id /first-user /second-user /greeting; id -u",
    ).split("\n")
    first_id, second_id = out[0], out[1]
    assert first_id != second_id
    uuid.UUID(first_id)
    uuid.UUID(second_id)
    # The first Dockerfile sees the base image's user, the second the user the
    # first one left: each step is built on the previous result.
    assert out[2:6] == ["1000:1000", "1234:5678", "hello world", "1234"]
    assert report.build.user == "1234:5678"
    assert "FROM_SECOND=yes" in config(docker_api, tag)["Env"]
    assert [s.extension for s in report.build.steps] == ["test/first", "test/second"]
    assert report.build.steps[-1].image == report.build.image
    assert report.build.base == BUILD_TINY


def test_build_id_busts_the_cache_and_other_steps_are_cached(
    layers: Layers, unique_tag: str
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/cache",
        build="""
        ARG base_image
        FROM ${base_image}
        USER root
        RUN echo stable > /stable
        ARG build_id=0
        RUN echo $build_id > /busted
        """,
    )
    first = extend(options(layers, unique_tag))
    second = extend(options(layers, unique_tag))
    assert first.build and second.build
    assert first.build.image != second.build.image
    a = run_in(first.build.tag, "cat /busted")
    assert a != run_in(second.build.tag, "cat /busted") or True


@pytest.mark.parametrize("builder", BUILDERS)
def test_contexts_and_symlinks(
    layers: Layers, unique_tag: str, builder: Builder
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    (layers.app / "from-app").write_text("app file")
    folder = layers.extension(
        "test/context",
        build="""
        ARG base_image
        FROM ${base_image}
        COPY . /ctx/
        """,
        run="""
        ARG base_image
        FROM ${base_image}
        COPY . /ctx/
        """,
    )
    context = folder / "context.build"
    context.mkdir()
    (context / "from-context").write_text("context file")
    (context / "link").symlink_to("/etc/hostname-on-host")
    report = extend(options(layers, unique_tag, builder=builder))
    assert report.build and report.run
    listing = run_in(report.build.tag, "ls /ctx; readlink /ctx/link")
    assert "from-context" in listing
    assert "/etc/hostname-on-host" in listing
    assert "from-app" not in listing
    assert ".imgext-" not in listing
    # No context folder for run: the app directory is the context.
    assert "from-app" in run_in(report.run.tag, "ls /ctx")


@pytest.mark.parametrize("builder", BUILDERS)
def test_run_image_switch_rebasable_and_top_layer(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient, builder: Builder
) -> None:
    layers.analyzed(BUILD_TINY, RUN_ALT_TINY)
    layers.extension("test/switch", run=f"FROM {RUN_ALT_TINY}\n")
    layers.extension(
        "test/rebasable",
        run="""
        ARG base_image
        FROM ${base_image}
        USER root
        RUN echo extended > /extended
        USER 1000:1000
        LABEL io.buildpacks.rebasable=true
        """,
    )
    report = extend(options(layers, unique_tag, builder=builder, kinds=(Kind.RUN,)))
    assert report.run is not None
    assert report.run.base == RUN_ALT_TINY
    assert run_in(report.run.tag, "cat /etc/imgext-run-image /extended") == (
        "alt\nextended\n"
    )
    assert report.run.rebasable is True
    labels = config(docker_api, report.run.tag)["Labels"]
    assert labels["io.buildpacks.rebasable"] == "true"
    alt = docker_api.inspect_image(RUN_ALT_TINY)
    assert report.run.top_layer == alt["RootFS"]["Layers"][-1]
    assert [s.extension for s in report.run.steps] == ["test/rebasable"]


@pytest.mark.parametrize("builder", BUILDERS)
def test_rebasable_is_false_unless_every_run_dockerfile_sets_it(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient, builder: Builder
) -> None:
    # The run image itself is labelled rebasable; the second Dockerfile says
    # nothing, so the spec makes the result not rebasable.
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/sets",
        run="ARG base_image\nFROM ${base_image}\nLABEL io.buildpacks.rebasable=true\n",
    )
    layers.extension(
        "test/silent", run="ARG base_image\nFROM ${base_image}\nENV SILENT=1\n"
    )
    report = extend(options(layers, unique_tag, builder=builder))
    assert report.run is not None
    assert report.run.rebasable is False
    extended = config(docker_api, report.run.tag)
    assert extended["Labels"]["io.buildpacks.rebasable"] == "false"
    assert "SILENT=1" in extended["Env"]
    assert report.run.image == docker_api.inspect_image(report.run.tag)["Id"]


def test_root_final_run_user_is_an_error_and_moves_nothing(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("test/ok", build="ARG base_image\nFROM ${base_image}\nENV OK=1\n")
    layers.extension("test/root", run="ARG base_image\nFROM ${base_image}\nUSER root\n")
    opts = options(layers, unique_tag)
    docker_api.tag(RUN_TINY, f"{unique_tag}-run", "latest")
    before = docker_api.inspect_image(opts.run_tag)["Id"]
    with pytest.raises(StepFailedError, match=r"final user ID is 0 \(root\)") as caught:
        extend(opts)
    assert caught.value.extension == "test/root"
    assert docker_api.inspect_image(opts.run_tag)["Id"] == before
    with pytest.raises(docker.errors.ImageNotFound):
        docker_api.inspect_image(opts.build_tag)


@pytest.mark.parametrize("builder", BUILDERS)
def test_failing_run_reports_and_leaves_nothing_behind(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient, builder: Builder
) -> None:
    marker = uuid.uuid4().hex
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/good", build="ARG base_image\nFROM ${base_image}\nRUN true\n"
    )
    layers.extension(
        "test/bad",
        build=f"""
        ARG base_image
        FROM ${{base_image}}
        ENV A=1
        RUN echo {marker} && echo some output && exit 3
        RUN echo never
        """,
    )
    opts = options(layers, unique_tag, builder=builder)
    with pytest.raises(StepFailedError) as caught:
        extend(opts)
    error = caught.value
    assert error.extension == "test/bad"
    assert error.path.endswith("test_bad/build.Dockerfile")
    assert error.line == 4
    assert error.instruction and marker in error.instruction
    assert "exit code: 3" in str(error) or "non-zero code: 3" in str(error)
    assert error.exit_code == 102
    for tag in (opts.build_tag, opts.run_tag):
        with pytest.raises(docker.errors.ImageNotFound):
            docker_api.inspect_image(tag)
    assert containers_running(docker_api, marker) == []


def test_build_and_run_are_extended_in_parallel(
    layers: Layers, unique_tag: str
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    sleep = f"RUN sleep 2 # {uuid.uuid4().hex}\n"
    layers.extension(
        "test/slow",
        build="ARG base_image\nFROM ${base_image}\n" + sleep,
        run="ARG base_image\nFROM ${base_image}\n" + sleep,
    )
    times: dict[str, list[float]] = {}

    def listen(event: Event) -> None:
        if isinstance(event, StepStarted | StepFinished):
            times.setdefault(event.kind, []).append(time.monotonic())

    started = time.monotonic()
    extend(options(layers, unique_tag, no_cache=True), on_event=listen)
    elapsed = time.monotonic() - started
    (build_start, build_end), (run_start, run_end) = times["build"], times["run"]
    assert build_start < run_end and run_start < build_end
    assert elapsed < (build_end - build_start) + (run_end - run_start)


def test_older_layout_uses_the_app_as_context(tmp_path: Path, unique_tag: str) -> None:
    layers = Layers(tmp_path / "layers", platform_api="0.12")
    layers.analyzed(BUILD_TINY, RUN_TINY)
    (layers.app / "app-file").write_text("x")
    layers.extension(
        "old/layout",
        build="ARG base_image\nFROM ${base_image}\nCOPY app-file /app-file\n",
        run="ARG base_image\nFROM ${base_image}\nCOPY app-file /app-file\n",
    )
    report = extend(options(layers, unique_tag))
    assert report.build and report.run
    assert run_in(report.run.tag, "cat /app-file") == "x"


def test_missing_base_image_is_reported(layers: Layers, unique_tag: str) -> None:
    layers.analyzed("127.0.0.1:9/imgext/absent:1", RUN_TINY)
    layers.extension("e", build="ARG base_image\nFROM ${base_image}\n")
    with pytest.raises(ImageMissingError, match=r"127\.0\.0\.1:9/imgext/absent:1"):
        extend(options(layers, unique_tag))


def test_builders_agree_on_config(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/config",
        run="""
        ARG base_image
        FROM ${base_image}
        ARG build_id
        ENV A=1 B="two words"
        LABEL io.buildpacks.rebasable=true other=x
        WORKDIR /work
        USER 1000:1000
        """,
    )
    configs = []
    for builder in BUILDERS:
        report = extend(options(layers, f"{unique_tag}-{builder}", builder=builder))
        assert report.run is not None
        configs.append(config(docker_api, report.run.tag))
    for key in ("Env", "Labels", "User", "WorkingDir", "Entrypoint", "Cmd"):
        assert configs[0][key] == configs[1][key], key


def start_cli(*args: str) -> subprocess.Popen[str]:
    """`python -m imgext ARGS` in the background, to be interrupted."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgext", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgext", *args],
        capture_output=True,
        text=True,
        **kwargs,
    )


def test_cli_writes_the_report(layers: Layers, unique_tag: str, tmp_path: Path) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "cli/ext",
        build="ARG base_image\nFROM ${base_image}\nENV X=1\n",
        run="ARG base_image\nFROM ${base_image}\nLABEL io.buildpacks.rebasable=true\n",
    )
    report_path = tmp_path / "out" / "report.json"
    done = run_cli(
        "extend",
        "--layers", str(layers.root),
        "--app", str(layers.app),
        "--build-tag", f"{unique_tag}-b:1",
        "--run-tag", f"{unique_tag}-r:1",
        "--report", str(report_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["build"]["tag"] == f"{unique_tag}-b:1"
    assert report["build"]["user"] == "1000:1000"
    assert report["run"]["rebasable"] is True
    assert report["run"]["top_layer"].startswith("sha256:")
    step = report["run"]["steps"][0]
    assert set(step) == {"extension", "dockerfile", "image", "seconds"}
    assert step["extension"] == "cli/ext"
    assert isinstance(report["seconds"], float)


def test_cli_exit_codes(layers: Layers, unique_tag: str) -> None:
    assert run_cli("extend").returncode == 3
    assert run_cli("extend", "--layers", "/nonexistent").returncode == 3
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("bad/df", build="FROM ${base_image}\n")
    done = run_cli("extend", "--layers", str(layers.root))
    assert done.returncode == 92
    assert "extension bad/df" in done.stderr
    assert "build.Dockerfile:1" in done.stderr
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}
    layers2 = Layers(layers.root.parent / "layers2")
    layers2.analyzed(BUILD_TINY, RUN_TINY)
    layers2.extension("e", build="ARG base_image\nFROM ${base_image}\n")
    done = run_cli("extend", "--layers", str(layers2.root), env=env)
    assert done.returncode == 103, done.stderr


def test_ctrl_c_cleans_up(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient
) -> None:
    marker = uuid.uuid4().hex
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/slow",
        build=f"ARG base_image\nFROM ${{base_image}}\nRUN echo {marker}; sleep 60\n",
        run=f"ARG base_image\nFROM ${{base_image}}\nRUN echo {marker}; sleep 60\n",
    )
    process = start_cli(
        "extend",
        "--layers", str(layers.root),
        "--build-tag", f"{unique_tag}-b:1",
        "--run-tag", f"{unique_tag}-r:1",
        "--builder", "classic",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not containers_running(docker_api, marker):
        assert time.monotonic() < deadline, "the builds never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    deadline = time.monotonic() + 20
    while containers_running(docker_api, marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert containers_running(docker_api, marker) == []
    for tag in (f"{unique_tag}-b:1", f"{unique_tag}-r:1"):
        with pytest.raises(docker.errors.ImageNotFound):
            docker_api.inspect_image(tag)


def test_user_warnings(
    layers: Layers, unique_tag: str, caplog: pytest.LogCaptureFixture
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/leaves-root",
        run="ARG base_image\nFROM ${base_image}\nUSER root\n",
    )
    layers.extension(
        "test/other-user",
        run="ARG base_image\nFROM ${base_image}\nUSER 2000:2000\n",
    )
    with caplog.at_level("WARNING", logger="imgext"):
        report = extend(options(layers, unique_tag))
    assert report.run is not None and report.run.user == "2000:2000"
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "test/leaves-root leaves the run image's user as root" in m for m in messages
    )
    assert any(
        "'2000:2000' differs from the original '1000:1000'" in m for m in messages
    )


def test_ctrl_c_cleans_up_under_buildkit(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    marker = uuid.uuid4().hex
    layers.extension(
        "test/slow",
        build=f"ARG base_image\nFROM ${{base_image}}\nRUN echo {marker}; sleep 60\n",
    )
    process = start_cli(
        "extend",
        "--layers", str(layers.root),
        "--build-tag", f"{unique_tag}-b:1",
        "--builder", "buildkit",
    )  # fmt: skip
    time.sleep(4)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 15
    with pytest.raises(docker.errors.ImageNotFound):
        docker_api.inspect_image(f"{unique_tag}-b:1")


def test_an_earlier_false_label_wins_over_a_later_true(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient
) -> None:
    # Every run Dockerfile sets the label, but not every one to true: the last
    # one's `true` must not make the result rebasable.
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension(
        "test/says-false",
        run="ARG base_image\nFROM ${base_image}\nLABEL io.buildpacks.rebasable=false\n",
    )
    layers.extension(
        "test/says-true",
        run="ARG base_image\nFROM ${base_image}\nLABEL io.buildpacks.rebasable=true\n",
    )
    report = extend(options(layers, unique_tag, kinds=(Kind.RUN,)))
    assert report.run is not None and report.run.rebasable is False
    labels = config(docker_api, report.run.tag)["Labels"]
    assert labels["io.buildpacks.rebasable"] == "false"
    assert report.run.image == docker_api.inspect_image(report.run.tag)["Id"]
