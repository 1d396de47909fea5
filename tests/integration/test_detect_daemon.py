"""Detect and generate inside a builder image made here, against the real
daemon, and the one-command path from an app and a builder to extended images."""

from __future__ import annotations

import filecmp
import io
import json
import re
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from imgext import Daemon, ExitCode
from imgext._cli import main
from imgext._prepare import PrepareOptions, prepare
from imgext._runner import wait_for_removals
from tests import cnb
from tests.conftest import BUILD_TINY, RUN_ALT_TINY, RUN_TINY

pytestmark = pytest.mark.daemon

SWITCH_BUILD_RUN = "run-switch,build-ext,run-ext"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return cnb.sample_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def builder(
    docker_api: docker.APIClient, store: tuple[Path, Path, Path]
) -> Iterator[str]:
    """A builder image: the tiny build image plus the sample extensions and the
    buildpack that requires what BP_REQUIRES names."""
    tag = f"imgext-it/detect-{uuid.uuid4().hex[:10]}:builder"
    context = cnb.builder_context(BUILD_TINY, *store)
    for event in docker_api.build(
        fileobj=io.BytesIO(context),
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        decode=True,
    ):
        assert "error" not in event, event
    yield tag
    wait_for_removals()
    docker_api.remove_image(tag, noprune=False)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "index.txt").write_text("an app\n")
    return folder


def _containers(docker_api: docker.APIClient, image: str) -> list[object]:
    return list(
        docker_api.containers(
            all=True, filters={"ancestor": image, "label": "io.imgext.role"}
        )
    )


def _detect(
    tmp_path: Path, app: Path, requires: str, *extra: str, name: str = "layers"
) -> tuple[int, Path]:
    layers = tmp_path / name
    platform = cnb.platform(tmp_path / f"platform-{name}", BP_REQUIRES=requires)
    code = main(
        [
            "detect",
            "--app",
            str(app),
            "--layers",
            str(layers),
            "--platform",
            str(platform),
            *extra,
        ]
    )
    return code, layers


def test_builder_detect_and_generate(
    tmp_path: Path, app: Path, builder: str, docker_api: docker.APIClient
) -> None:
    code, layers = _detect(tmp_path, app, SWITCH_BUILD_RUN, "--builder", builder)
    assert code == ExitCode.OK
    group = tomllib.loads((layers / "group.toml").read_text())
    # test/never fails detect and test/unused provides what nobody requires:
    # neither is in the group; the others keep the order's order.
    assert [e["id"] for e in group["group-extensions"]] == [
        "test/run-switch",
        "test/build-ext",
        "test/run-ext",
    ]
    assert [e["id"] for e in group["group"]] == ["test/requirer"]
    analyzed = tomllib.loads((layers / "analyzed.toml").read_text())
    assert analyzed["run-image"] == {
        "reference": RUN_ALT_TINY,
        "image": RUN_ALT_TINY,
        "extend": True,
    }
    generated = layers / "generated"
    assert (generated / "test_run-switch" / "run.Dockerfile").read_text() == (
        f"FROM {RUN_ALT_TINY}\n"
    )
    assert (generated / "test_run-ext" / "context.run" / "note.txt").is_file()
    # The target came from the builder image; the requirer passed it through
    # the plan to build-ext's generate.
    config = (generated / "test_build-ext" / "extend-config.toml").read_text()
    assert 'value = "linux"' in config
    assert not (generated / "test_never").exists()
    assert not (generated / "test_unused").exists()
    # The builder container is removed in the background; none is left.
    wait_for_removals()
    assert _containers(docker_api, builder) == []


@pytest.mark.parametrize("platform_api", ["0.13", "0.12"])
def test_builder_and_host_folders_give_the_same_files(
    tmp_path: Path,
    app: Path,
    builder: str,
    store: tuple[Path, Path, Path],
    platform_api: str,
) -> None:
    extensions, buildpacks, order = store
    api = ("--platform-api", platform_api)
    code, from_builder = _detect(
        tmp_path, app, SWITCH_BUILD_RUN, "--builder", builder, *api, name="builder"
    )
    assert code == ExitCode.OK
    code, from_host = _detect(
        tmp_path,
        app,
        SWITCH_BUILD_RUN,
        "--extensions",
        str(extensions),
        "--buildpacks",
        str(buildpacks),
        "--order",
        str(order),
        *api,
        name="host",
    )
    assert code == ExitCode.OK
    _assert_same_tree(from_builder, from_host)


def _assert_same_tree(left: Path, right: Path) -> None:
    comparison = filecmp.dircmp(left, right)
    assert comparison.left_only == comparison.right_only == []
    _, mismatch, errors = filecmp.cmpfiles(
        left, right, comparison.common_files, shallow=False
    )
    assert (mismatch, errors) == ([], [])
    for folder in comparison.common_dirs:
        _assert_same_tree(left / folder, right / folder)


def test_failing_generate_exits_91_with_its_stderr(
    tmp_path: Path, app: Path, builder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _detect(tmp_path, app, "fails", "--builder", builder)
    assert code == 91  # ExitCode.EXTENSION_FAILED, the lifecycle's code
    err = capsys.readouterr().err
    assert "extension test/fails: bin/generate failed (exit code 3)" in err
    assert "cannot reach the package index" in err


def test_invalid_generate_output_exits_92(
    tmp_path: Path, app: Path, builder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _detect(tmp_path, app, "bad-output", "--builder", builder)
    assert code == 92  # ExitCode.INVALID_EXTENSION_OUTPUT
    err = capsys.readouterr().err
    assert "extension test/bad-output" in err
    assert "multistage" in err
    assert "build.Dockerfile:3" in err


def test_nothing_provides_a_requirement_exits_20(
    tmp_path: Path, app: Path, builder: str
) -> None:
    code, _ = _detect(tmp_path, app, "ghost", "--builder", builder)
    assert code == 20  # ExitCode.DETECT_FAILED, the lifecycle's code


def test_executables_run_as_the_builder_user_in_the_app(
    tmp_path: Path, app: Path, builder: str
) -> None:
    code, layers = _detect(tmp_path, app, "whoami", "--builder", builder)
    assert code == ExitCode.OK
    whoami = layers / "generated" / "test_whoami" / "context" / "whoami"
    assert whoami.read_text() == "1000:1000 /workspace /platform\n"


def test_detect_and_generate_of_three_extensions_is_fast(
    tmp_path: Path, app: Path, builder: str
) -> None:
    platform = cnb.platform(tmp_path / "platform", BP_REQUIRES=SWITCH_BUILD_RUN)
    daemon = Daemon.connect()
    times = []
    for run in range(3):
        prepared = prepare(
            PrepareOptions(
                app=app,
                layers=tmp_path / f"layers-{run}",
                builder=builder,
                platform=platform,
            ),
            daemon=daemon,
        )
        assert len(prepared.detected.extensions) == 3
        times.append(prepared.seconds)
    # The goal is under 2 s (scripts/bench-detect.py measures it, about 1 s on
    # an idle machine); the best of three with room to spare keeps this test
    # from failing on a machine busy with other builds.
    assert min(times) < 3.0, times


def test_one_command_from_app_and_builder_to_extended_images(
    tmp_path: Path, app: Path, builder: str, unique_tag: str
) -> None:
    platform = cnb.platform(tmp_path / "platform", BP_REQUIRES=SWITCH_BUILD_RUN)
    build_tag, run_tag = f"{unique_tag}/build:one", f"{unique_tag}/run:one"
    code = main(
        [
            "extend",
            "--app",
            str(app),
            "--builder",
            builder,
            "--platform",
            str(platform),
            "--run-image",
            RUN_TINY,
            "--build-tag",
            build_tag,
            "--run-tag",
            run_tag,
            "--quiet",
        ]
    )
    assert code == ExitCode.OK
    client = docker.from_env()
    try:
        built = client.containers.run(build_tag, ["cat", "/opt-build-ext"], remove=True)
        assert built == b"built for linux\n"
        ran = client.containers.run(
            run_tag, ["cat", "/etc/imgext-run-image", "/etc/run-ext-note"], remove=True
        )
        # The run image was switched to run-alt, then extended by run-ext.
        assert ran == b"alt\nfrom-context\n"
        build_config = client.api.inspect_image(build_tag)["Config"]
        run_config = client.api.inspect_image(run_tag)["Config"]
        assert build_config["User"] == "1000:1000"
        assert run_config["User"] == "1000:1000"
        assert run_config["Labels"]["io.buildpacks.rebasable"] == "true"
        # The build image extended is the builder itself.
        builder_layers = client.api.inspect_image(builder)["RootFS"]["Layers"]
        build_layers = client.api.inspect_image(build_tag)["RootFS"]["Layers"]
        assert build_layers[: len(builder_layers)] == builder_layers
        assert len(build_layers) > len(builder_layers)
    finally:
        client.close()


def test_one_command_from_host_folders(
    tmp_path: Path, app: Path, store: tuple[Path, Path, Path], unique_tag: str
) -> None:
    extensions, buildpacks, order = store
    platform = cnb.platform(tmp_path / "platform", BP_REQUIRES="build-ext")
    layers = tmp_path / "kept-layers"
    build_tag = f"{unique_tag}/build:host"
    code = main(
        [
            "extend",
            "--app",
            str(app),
            "--extensions",
            str(extensions),
            "--buildpacks",
            str(buildpacks),
            "--order",
            str(order),
            "--platform",
            str(platform),
            "--layers",
            str(layers),
            "--build-image",
            BUILD_TINY,
            "--run-image",
            RUN_TINY,
            "--build-tag",
            build_tag,
            "--quiet",
        ]
    )
    assert code == ExitCode.OK
    # With --layers the files detect and generate wrote are kept.
    group = tomllib.loads((layers / "group.toml").read_text())
    assert [e["id"] for e in group["group-extensions"]] == ["test/build-ext"]
    client = docker.from_env()
    try:
        built = client.containers.run(build_tag, ["cat", "/opt-build-ext"], remove=True)
        assert built == b"built for linux\n"
    finally:
        client.close()


def test_builder_detect_gets_the_spec_environment(
    tmp_path: Path, app: Path, builder: str
) -> None:
    # The order comes from the host; the buildpack from the builder image.
    order = cnb.order(tmp_path / "order.toml", [["test/checker"]])
    platform = cnb.platform(tmp_path / "platform", FROM_PLATFORM="a value")
    code = main(
        [
            "detect",
            "--app",
            str(app),
            "--layers",
            str(tmp_path / "layers"),
            "--builder",
            builder,
            "--order",
            str(order),
            "--platform",
            str(platform),
            "--log-level",
            "debug",
        ]
    )
    # The builder's own ENV (CNB_USER_ID) is not passed on, as in the lifecycle;
    # its build config is, over the platform's variables.
    assert code == ExitCode.OK


def test_a_run_dockerfile_before_a_switch_is_ignored(
    tmp_path: Path, app: Path, builder: str
) -> None:
    order = cnb.order(
        tmp_path / "order.toml",
        [["test/requirer"]],
        ["test/run-ext", "test/run-switch"],
    )
    code, layers = _detect(
        tmp_path,
        app,
        "run-ext,run-switch",
        "--builder",
        builder,
        "--order",
        str(order),
    )
    assert code == ExitCode.OK
    generated = layers / "generated"
    assert (generated / "test_run-ext" / "run.Dockerfile.ignore").is_file()
    assert not (generated / "test_run-ext" / "run.Dockerfile").exists()
    analyzed = tomllib.loads((layers / "analyzed.toml").read_text())
    # Only the switch is left, and it adds nothing after FROM: no extend.
    assert analyzed["run-image"] == {"reference": RUN_ALT_TINY, "image": RUN_ALT_TINY}


def test_builder_detect_in_json_and_plain(
    tmp_path: Path, app: Path, builder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "detect.json"
    code, _ = _detect(
        tmp_path,
        app,
        SWITCH_BUILD_RUN,
        "--builder",
        builder,
        "--json",
        "--report",
        str(report),
    )
    assert code == ExitCode.OK
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Each executable run in the builder container was followed as it went.
    ran = [(e["phase"], e["id"]) for e in events if e["event"] == "run-ended"]
    assert ("detect", "test/requirer") in ran
    assert ("generate", "test/build-ext") in ran
    assert all(
        e["code"] == 0
        for e in events
        if e["event"] == "run-ended" and e["phase"] == "generate"
    )
    assert events[-1]["event"] == "report"
    assert events[-1]["report"] == json.loads(report.read_text())
    assert [e["id"] for e in events[-1]["report"]["extensions"]] == [
        "test/run-switch",
        "test/build-ext",
        "test/run-ext",
    ]

    code, _ = _detect(
        tmp_path, app, SWITCH_BUILD_RUN, "--builder", builder, name="plain"
    )
    assert code == ExitCode.OK
    out = capsys.readouterr().out
    assert not CONTROL.search(out.replace("\n", ""))
    assert "detect buildpack test/requirer@0.0.1  pass in " in out
    assert (
        "generate extension test/build-ext@0.0.1  | build-ext generated for linux"
        in out
    )
    assert f"run image: {RUN_ALT_TINY} (to be extended)" in out


def test_one_command_shows_detect_then_the_builds(
    tmp_path: Path,
    app: Path,
    builder: str,
    unique_tag: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    platform = cnb.platform(tmp_path / "platform", BP_REQUIRES="build-ext")
    code = main(
        [
            "extend",
            "--app",
            str(app),
            "--builder",
            builder,
            "--platform",
            str(platform),
            "--run-image",
            RUN_TINY,
            "--build-tag",
            f"{unique_tag}/build:json",
            "--json",
        ]
    )
    assert code == ExitCode.OK
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = [e["event"] for e in events]
    # Detect and generate first, what they decided, then the build, the report.
    assert names.index("run-finished") < names.index("detected")
    assert names.index("detected") < names.index("step-started")
    assert names[-1] == "report"
    detected = events[names.index("detected")]["report"]
    assert [e["id"] for e in detected["extensions"]] == ["test/build-ext"]
    assert events[-1]["report"]["build"]["tag"] == f"{unique_tag}/build:json"


def test_ctrl_c_during_builder_detect_leaves_nothing(
    tmp_path: Path, app: Path, builder: str, docker_api: docker.APIClient
) -> None:
    order = cnb.order(tmp_path / "order.toml", [["test/requirer"]], ["test/sleeps"])
    layers = tmp_path / "layers"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "imgext", "detect", "--app", str(app),
            "--layers", str(layers), "--builder", builder, "--order", str(order),
            "--platform", str(cnb.platform(tmp_path / "platform")), "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "run-started" and seen[-1]["id"] == "test/sleeps":
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    events = seen + [json.loads(line) for line in out.splitlines()]
    # The sleeping detect is shown as stopped; the last line says why.
    stopped = [
        e for e in events if e["event"] == "run-finished" and e["id"] == "test/sleeps"
    ]
    assert stopped[0]["state"] == "cancelled"
    assert events[-1]["event"] == "error"
    assert events[-1]["exit_code"] == 130
    assert events[-1]["message"] == "interrupted: no file was written"
    assert not layers.exists() or list(layers.iterdir()) == []
    # The process waited for its builder container to go before it exited.
    assert _containers(docker_api, builder) == []
