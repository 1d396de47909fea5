from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import requests

from imgext import DaemonError, ExitCode
from imgext._daemon import Daemon
from imgext._doctor import Check, Setup, exit_code, run, to_json, to_text

GB = 1_000_000_000


class FakeDaemon:
    def __init__(
        self,
        images: dict[str, dict[str, Any]] | None = None,
        *,
        api: tuple[int, int] = (1, 41),
        root: str = "/var/lib/docker",
    ) -> None:
        self.images = images or {}
        self.api_version = api
        self.tags: list[str] = []
        self.containers: list[str] = []
        self.client = SimpleNamespace(
            info=lambda: {"DockerRootDir": root},
            images=lambda: [{"RepoTags": self.tags}],
            containers=lambda all, filters: [{"Id": c} for c in self.containers],
        )

    def version(self) -> dict[str, Any]:
        return {
            "Version": "20.10.24",
            "Os": "linux",
            "Arch": "amd64",
            "ApiVersion": "1.41",
        }

    def buildkit_available(self) -> bool:
        return self.api_version >= (1, 38)

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return self.images.get(ref)


def setup(
    tmp_path: Path,
    daemon: FakeDaemon | None = None,
    *,
    env: dict[str, str] | None = None,
    free: int = 50 * GB,
    http: dict[str, int] | None = None,
) -> Setup:
    def connect() -> Daemon:
        if daemon is None:
            raise DaemonError(
                "cannot reach the Docker daemon: refused", hint="start it"
            )
        return cast(Daemon, daemon)

    def get(url: str) -> requests.Response:
        if http is None or url not in http:
            raise requests.ConnectionError("[Errno 111] Connection refused")
        response = requests.Response()
        response.status_code = http[url]
        return response

    return Setup(
        env={"HOME": str(tmp_path), **(env or {})},
        connect=connect,
        disk_usage=lambda path: SimpleNamespace(free=free),
        http_get=get,
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


IMAGE = {"Id": "sha256:" + "a" * 64, "Size": 2_000_000, "Config": {"User": "1000:1000"}}


def test_all_good(tmp_path: Path) -> None:
    daemon = FakeDaemon({"b:1": IMAGE, "r:1": IMAGE})
    checks = run(setup(tmp_path, daemon), images=["b:1", "r:1"])
    assert all(c.status == "ok" for c in checks), checks
    assert exit_code(checks) == 0
    text = to_text(checks)
    assert "API 1.41" in text
    assert "b:1 present (aaaaaaaaaaaa, 2.0 MB, user 1000:1000)" in text
    assert text.endswith("everything imgext needs is in place\n")


def test_unreachable_daemon_stops_the_checks(tmp_path: Path) -> None:
    checks = run(setup(tmp_path, None), images=["b:1"])
    assert [c.name for c in checks] == ["endpoint", "daemon"]
    assert exit_code(checks) == ExitCode.DAEMON_UNREACHABLE
    assert "hint: start it" in to_text(checks)


def test_missing_image_is_named_with_what_to_do(tmp_path: Path) -> None:
    checks = run(setup(tmp_path, FakeDaemon()), images=["example/run:1"])
    image = by_name(checks)["image"]
    assert image.status == "fail"
    assert "example/run:1 is not in the daemon" in image.detail
    assert image.hint and "docker pull example/run:1" in image.hint
    assert exit_code(checks) == ExitCode.IMAGE_MISSING


def test_images_come_from_analyzed_toml(tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    layers.mkdir()
    (layers / "analyzed.toml").write_text(
        '[build-image]\nreference = "b:1"\n[run-image]\nreference = "r:1"\n'
    )
    checks = run(setup(tmp_path, FakeDaemon({"b:1": IMAGE})), images=[], layers=layers)
    images = [c for c in checks if c.name == "image"]
    assert [c.status for c in images] == ["ok", "fail"]


def test_missing_analyzed_toml_is_a_usage_error(tmp_path: Path) -> None:
    checks = run(setup(tmp_path, FakeDaemon()), images=[], layers=tmp_path)
    assert exit_code(checks) == ExitCode.USAGE


def test_old_daemon_warns_about_buildkit(tmp_path: Path) -> None:
    checks = run(setup(tmp_path, FakeDaemon(api=(1, 30))), images=[])
    buildkit = by_name(checks)["buildkit"]
    assert buildkit.status == "warn"
    assert "classic builder" in buildkit.detail
    assert exit_code(checks) == 0


@pytest.mark.parametrize(
    ("free", "status"), [(50 * GB, "ok"), (3 * GB, "warn"), (GB // 2, "fail")]
)
def test_free_disk(tmp_path: Path, free: int, status: str) -> None:
    checks = run(setup(tmp_path, FakeDaemon(), free=free), images=[])
    assert by_name(checks)["disk"].status == status


def test_remote_daemon_disk_is_not_measured(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": "tcp://build-host:2376"}
    checks = run(setup(tmp_path, FakeDaemon(), env=env), images=[])
    assert by_name(checks)["endpoint"].detail == "DOCKER_HOST=tcp://build-host:2376"
    assert "remote" in by_name(checks)["disk"].detail


def test_a_docker_context_imgext_would_ignore_is_a_warning(tmp_path: Path) -> None:
    config = tmp_path / ".docker"
    digest = hashlib.sha256(b"remote").hexdigest()
    meta = config / "contexts" / "meta" / digest / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"Endpoints": {"docker": {"Host": "ssh://me@box"}}}))
    (config / "config.json").write_text(json.dumps({"currentContext": "remote"}))
    endpoint = by_name(run(setup(tmp_path, FakeDaemon()), images=[]))["endpoint"]
    assert endpoint.status == "warn"
    assert "context remote (ssh://me@box)" in endpoint.detail
    assert endpoint.hint == "export DOCKER_HOST=ssh://me@box"


def test_registry_reachable_and_logged_in(tmp_path: Path) -> None:
    config = tmp_path / ".docker"
    config.mkdir()
    auth = {"auths": {"registry.test:5000": {"auth": "dXNlcjpzZWNyZXQ="}}}
    (config / "config.json").write_text(json.dumps(auth))
    http = {"https://registry.test:5000/v2/": 401}
    checks = run(
        setup(tmp_path, FakeDaemon(), http=http),
        images=[],
        registry="registry.test:5000",
    )
    assert by_name(checks)["registry"].status == "ok"
    login = by_name(checks)["login"]
    assert login.status == "ok"
    assert "as user" in login.detail


def test_unreachable_registry_fails_and_missing_login_warns(tmp_path: Path) -> None:
    checks = run(setup(tmp_path, FakeDaemon()), images=[], registry="nowhere:5000")
    registry = by_name(checks)["registry"]
    assert registry.status == "fail"
    assert "[Errno 111] Connection refused" in registry.detail
    assert by_name(checks)["login"].status == "warn"
    assert exit_code(checks) == ExitCode.REGISTRY_FAILED


def test_json_lists_every_check(tmp_path: Path) -> None:
    checks = run(setup(tmp_path, FakeDaemon()), images=[])
    data = json.loads(to_json(checks))
    assert [c["name"] for c in data] == [c.name for c in checks]
    assert {"name", "status", "detail", "hint", "exit_code"} == set(data[0])


def test_leftovers_of_a_killed_run_are_reported_with_the_fix(tmp_path: Path) -> None:
    daemon = FakeDaemon()
    assert by_name(run(setup(tmp_path, daemon), images=[]))["leftover"].status == "ok"
    daemon.tags = [
        "imgext-test/run:tiny",
        "imgext-tmp/abc-run:1",
        "imgext-tmp/abc-run:0",
    ]
    daemon.containers = ["f" * 64]
    checks = run(setup(tmp_path, daemon), images=[])
    leftover = by_name(checks)["leftover"]
    assert leftover.status == "warn"
    assert "2 temporary tag(s) (imgext-tmp/abc-run:0, imgext-tmp/abc-run:1)" in (
        leftover.detail
    )
    assert "1 detect container(s) (ffffffffffff)" in leftover.detail
    assert leftover.hint == (
        "when no imgext is running on this daemon: "
        "docker rmi imgext-tmp/abc-run:0 imgext-tmp/abc-run:1; "
        "docker rm -f ffffffffffff"
    )
    # A warning: imgext still works.
    assert exit_code(checks) == 0
