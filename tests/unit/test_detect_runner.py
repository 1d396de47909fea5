"""The runner that executes bin/detect and bin/generate: scripts, environment,
and the framed output a builder container sends back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgext import DaemonError, UsageError
from imgext._runner import (
    _MIRROR,
    Batch,
    HostRunner,
    Job,
    Target,
    _unpack,
    builder_user,
    image_target,
    job_script,
    read_outcome,
)

VALUE = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(VALUE, VALUE)
def test_values_reach_the_executable_unchanged(value: str, platform: str) -> None:
    job = Job(
        name="j",
        executable="/usr/bin/env",
        args=(),
        env=(("CNB_VALUE", value),),
        platform_env=(("FROM_PLATFORM", platform),),
    )
    script = job_script(job, "/")
    result = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, check=True, env={"HOME": "/x"}
    )
    seen = result.stdout.decode()
    assert f"CNB_VALUE={value}\n" in seen
    assert f"FROM_PLATFORM={platform}\n" in seen
    assert "HOME=/x\n" in seen


def test_only_the_lifecycle_variables_are_inherited() -> None:
    job = Job("j", "/usr/bin/env", (), ())
    env = {"PATH": "/bin:/usr/bin", "HTTP_PROXY": "p", "SECRET": "s"}
    result = subprocess.run(
        ["/bin/sh", "-c", job_script(job, "/")],
        capture_output=True,
        check=True,
        env=env,
    )
    names = {line.split("=", 1)[0] for line in result.stdout.decode().splitlines()}
    assert names == {"PATH", "HTTP_PROXY"}


def _env_of(job: Job, environ: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(
        ["/bin/sh", "-c", job_script(job, "/")],
        capture_output=True,
        check=True,
        env=environ,
    )
    return dict(line.split("=", 1) for line in result.stdout.decode().splitlines())


def test_build_config_is_layered_over_the_platform_env() -> None:
    job = Job(
        "j",
        "/usr/bin/env",
        (),
        (("CNB_OWN", "job"),),
        platform_env=(
            ("PATH", "/platform/bin"),
            ("FROM_PLATFORM", "plat"),
            ("KEPT", "platform wins"),
            ("dotted.name", "not a shell identifier"),
        ),
        build_config=(
            ("FROM_PLATFORM.append", "conf"),
            ("FROM_PLATFORM.delim", ","),
            ("HOME", "/home/conf"),
            ("KEPT.default", "unused default"),
            ("NEW.default", "a default"),
            ("PATH.prepend", "/conf/bin"),
            ("PATH.delim", ":"),
            ("QUOTED", 'it\'s "quoted" $HOME'),
            ("dotted.name.override", "ignored: a dotted name has no action"),
        ),
    )
    env = _env_of(job, {"PATH": "/usr/bin:/bin", "HOME": "/root", "SECRET": "s"})
    assert env == {
        "PATH": "/conf/bin:/platform/bin:/usr/bin:/bin",
        "HOME": "/home/conf",
        "FROM_PLATFORM": "plat,conf",
        "KEPT": "platform wins",
        "dotted.name": "not a shell identifier",
        "NEW": "a default",
        "QUOTED": 'it\'s "quoted" $HOME',
        "CNB_OWN": "job",
    }


def test_build_config_actions_on_unset_variables() -> None:
    job = Job(
        "j",
        "/usr/bin/env",
        (),
        (),
        build_config=(
            ("HOME.append", "/appended"),
            ("HOME.delim", ":"),
            ("LIBRARY_PATH.default", "/lib"),
            ("ONLY.prepend", "alone"),
            ("ONLY.delim", ":"),
        ),
    )
    # With nothing to add to, append and prepend leave out the delimiter.
    assert _env_of(job, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "HOME": "/appended",
        "LIBRARY_PATH": "/lib",
        "ONLY": "alone",
    }


def test_host_runner_runs_a_batch_and_reads_outcomes(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "marker").write_text("here")
    with HostRunner(app, None, Target()) as runner:
        assert Path(runner.platform).is_dir()
        batch: Batch = runner.batch("b")
        batch.jobs.append(Job("ok", "/bin/sh", ("-c", "cat marker; echo err >&2"), ()))
        batch.jobs.append(Job("bad", "/bin/sh", ("-c", "exit 100"), ()))
        results = runner.run(batch, parallel=True)
        ok, bad = read_outcome(results, "ok"), read_outcome(results, "bad")
    assert (ok.code, ok.stdout, ok.stderr) == (0, "here", "err\n")
    assert bad.code == 100
    assert not results.exists()


def test_serial_batches_stop_at_the_first_failure(tmp_path: Path) -> None:
    with HostRunner(tmp_path, None, Target()) as runner:
        batch = runner.batch("b")
        for name, code in (("one", 0), ("two", 3), ("three", 0)):
            batch.jobs.append(Job(name, "/bin/sh", ("-c", f"exit {code}"), ()))
        results = runner.run(batch, parallel=False)
        codes = [read_outcome(results, n).code for n in ("one", "two", "three")]
    assert codes == [0, 3, -1]


def test_sent_files_are_unpacked(tmp_path: Path) -> None:
    stdout = (
        b"d /cnb/x/generate\n"
        b"f /cnb/x/a.toml\n"
        b"x /cnb/x/bin/tool\n"
        b"e /cnb/x/bin/detect\n"
        b"s /cnb/y/generate\n"
        b"@@imgext-sizes\n"
        b"  3 /cnb/x/a.toml\n"
        b"  2 /cnb/x/bin/tool\n"
        b"  5 total\n"
        b"@@imgext-data\n"
        b"abchi"
    )
    assert _unpack(stdout, tmp_path) == {"/cnb/y/generate"}
    assert (tmp_path / "cnb/x/generate").is_dir()
    assert (tmp_path / "cnb/x/a.toml").read_bytes() == b"abc"
    assert (tmp_path / "cnb/x/bin/tool").read_bytes() == b"hi"
    assert os.access(tmp_path / "cnb/x/bin/tool", os.X_OK)
    assert not os.access(tmp_path / "cnb/x/a.toml", os.X_OK)
    assert (tmp_path / "cnb/x/bin/detect.exists").read_bytes() == b""


@pytest.mark.parametrize(
    "stdout",
    [
        b"garbage\n",
        b"f /../../etc/passwd\n@@imgext-sizes\n1 x\n@@imgext-data\nx",
        b"f /a\n@@imgext-sizes\n5 /a\n@@imgext-data\nxy",
    ],
)
def test_unexpected_output_is_refused(tmp_path: Path, stdout: bytes) -> None:
    with pytest.raises(DaemonError):
        _unpack(stdout, tmp_path)


def test_mirror_script_sends_what_detection_reads(tmp_path: Path) -> None:
    folder = tmp_path / "extensions" / "ext" / "1"
    (folder / "bin").mkdir(parents=True)
    (folder / "generate" / "context").mkdir(parents=True)
    (folder / "extension.toml").write_text("api = '0.10'\n")
    (folder / "bin" / "detect").write_text("#!/bin/sh\n")
    (folder / "bin" / "big-binary").write_bytes(b"\0" * 1000)
    (folder / "generate" / "run.Dockerfile").write_text("FROM x\n")
    (folder / "generate" / "context" / "f").write_text("f")
    script = tmp_path / "mirror.sh"
    script.write_text(_MIRROR)
    stdout = subprocess.run(
        ["/bin/sh", str(script), str(tmp_path / "extensions"), str(tmp_path / "none")],
        capture_output=True,
        check=True,
    ).stdout
    mirror = tmp_path / "mirror"
    assert _unpack(stdout, mirror) == set()
    copy = mirror / folder.relative_to("/")
    assert (copy / "extension.toml").read_text() == "api = '0.10'\n"
    assert (copy / "bin" / "detect.exists").exists()
    assert not (copy / "bin" / "big-binary").exists()
    assert (copy / "generate" / "context" / "f").read_text() == "f"


def test_builder_user_comes_from_cnb_variables() -> None:
    info = {"Config": {"Env": ["PATH=/bin", "CNB_USER_ID=1001", "CNB_GROUP_ID=1002"]}}
    assert builder_user(info, "b") == "1001:1002"
    with pytest.raises(UsageError, match="CNB_USER_ID"):
        builder_user({"Config": {"Env": []}}, "b")


def test_image_target_reads_platform_and_distro_labels() -> None:
    info = {
        "Os": "linux",
        "Architecture": "arm64",
        "Variant": "v8",
        "Config": {
            "Labels": {
                "io.buildpacks.base.distro.name": "ubuntu",
                "io.buildpacks.base.distro.version": "24.04",
            }
        },
    }
    target = image_target(info)
    assert dict(target.env()) == {
        "CNB_TARGET_OS": "linux",
        "CNB_TARGET_ARCH": "arm64",
        "CNB_TARGET_ARCH_VARIANT": "v8",
        "CNB_TARGET_DISTRO_NAME": "ubuntu",
        "CNB_TARGET_DISTRO_VERSION": "24.04",
    }


def test_a_tree_with_a_symlink_is_marked_special(tmp_path: Path) -> None:
    folder = tmp_path / "extensions" / "ext" / "1"
    (folder / "generate").mkdir(parents=True)
    (folder / "extension.toml").write_text("")
    (folder / "generate" / "link").symlink_to("/etc/hostname")
    script = tmp_path / "mirror.sh"
    script.write_text(_MIRROR)
    stdout = subprocess.run(
        ["/bin/sh", str(script), str(tmp_path / "extensions")],
        capture_output=True,
        check=True,
    ).stdout
    assert _unpack(stdout, tmp_path / "mirror") == {str(folder / "generate")}
