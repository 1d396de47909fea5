"""`imgext doctor` against the real daemon and real registries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from imgext import ExitCode
from imgext._cli import main

from ..conftest import BUILD_TINY, RUN_TINY
from .conftest_registry import Registry, auth_registry, free_port, registry

pytestmark = pytest.mark.daemon

__all__ = ["auth_registry", "registry"]


Checks = dict[tuple[str, str], dict[str, Any]]


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Checks]:
    code = main(["doctor", "--json", *args])
    checks = json.loads(capsys.readouterr().out)
    return code, {(c["name"], c["detail"].split()[0]): c for c in checks}


def by_name(checks: Checks) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for (name, _), check in checks.items():
        found.setdefault(name, []).append(check)
    return found


@pytest.fixture
def leftover(docker_api: docker.APIClient) -> Iterator[str]:
    """A temporary tag as a killed imgext would leave it."""
    tag = f"imgext-tmp/{uuid.uuid4().hex[:12]}-run:1"
    repository, _, version = tag.rpartition(":")
    docker_api.tag(RUN_TINY, repository, version)
    yield tag
    docker_api.remove_image(tag, noprune=True)


def test_doctor_on_this_machine(
    capsys: pytest.CaptureFixture[str], leftover: str
) -> None:
    code, checks = doctor(capsys, "--build-image", BUILD_TINY, "--run-image", RUN_TINY)
    assert code == ExitCode.OK
    found = by_name(checks)
    assert found["daemon"][0]["status"] == "ok"
    assert "API 1." in found["daemon"][0]["detail"]
    assert found["buildkit"][0]["status"] == "ok"
    assert [c["status"] for c in found["image"]] == ["ok", "ok"]
    assert found["disk"][0]["status"] in ("ok", "warn")
    # The tag a killed run left is named, with the command that removes it.
    assert found["leftover"][0]["status"] == "warn"
    assert leftover in found["leftover"][0]["detail"]
    assert f"docker rmi {leftover}" in found["leftover"][0]["hint"]


def test_a_missing_image_fails_with_its_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = f"imgext-it/{uuid.uuid4().hex[:10]}:absent"
    code, checks = doctor(capsys, "--run-image", missing)
    assert code == ExitCode.IMAGE_MISSING
    image = by_name(checks)["image"][0]
    assert image["status"] == "fail"
    assert missing in image["detail"]


def test_registries_reachable_and_logged_in(
    capsys: pytest.CaptureFixture[str],
    registry: Registry,
    auth_registry: Registry,
) -> None:
    # auth_registry points DOCKER_CONFIG at a config that logs in to it only.
    code, checks = doctor(capsys, "--registry", auth_registry.host)
    assert code == ExitCode.OK, checks
    found = by_name(checks)
    assert found["registry"][0]["status"] == "ok"
    assert found["login"][0]["status"] == "ok"
    assert "imgext-user" in found["login"][0]["detail"]
    code, checks = doctor(capsys, "--registry", registry.host)
    # Reachable, but no login for it: a warning, not a failure.
    assert code == ExitCode.OK
    found = by_name(checks)
    assert found["registry"][0]["status"] == "ok"
    assert found["login"][0]["status"] == "warn"
    assert f"docker login {registry.host}" in found["login"][0]["hint"]


def test_a_registry_that_is_down_fails_with_its_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = f"127.0.0.1:{free_port()}"
    code, checks = doctor(capsys, "--registry", host)
    assert code == ExitCode.REGISTRY_FAILED
    check = by_name(checks)["registry"][0]
    assert check["status"] == "fail"
    assert "Connection refused" in check["detail"]
