"""The bundled example, as the README's demo runs it: real apt installs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from imgext import ExtendOptions, extend

pytestmark = [pytest.mark.daemon, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_in(image: str, command: str) -> list[str]:
    done = subprocess.run(
        ["docker", "run", "--rm", image, "sh", "-c", command],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.splitlines()


def test_bundled_example(
    unique_tag: str, tmp_path: Path, docker_api: docker.APIClient
) -> None:
    report = extend(
        ExtendOptions(
            layers=EXAMPLES / "layers",
            app=EXAMPLES / "app",
            build_tag=f"{unique_tag}-build:1",
            run_tag=f"{unique_tag}-run:1",
            extended=tmp_path / "extended",
        )
    )
    assert report.build is not None and report.run is not None
    uid, curl = run_in(report.build.tag, "id -u; curl --version | head -1")
    assert uid == "1000"
    assert curl.startswith("curl ")
    uid, jq, run_image = run_in(
        report.run.tag, "id -u; jq --version; cat /etc/imgext-run-image"
    )
    assert (uid, run_image) == ("1000", "alt")
    assert jq.startswith("jq-")
    config = docker_api.inspect_image(report.run.tag)["Config"]
    assert config["Labels"]["io.buildpacks.rebasable"] == "true"
    assert config["User"] == "1000:1000"
    assert report.run.rebasable is True
    assert report.run.base == "imgext-test/run-alt:bookworm"
    assert report.run.extended is not None
    assert (Path(report.run.extended) / "index.json").is_file()
