"""Publishing extended images to a real registry through the daemon."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from imgext import Daemon, ExtendOptions, RegistryError, extend
from imgext._cli import main
from imgext._publish import push

from ..conftest import BUILD_TINY, RUN_TINY, Layers
from .conftest_registry import PASSWORD, Registry, auth_registry, free_port, registry

pytestmark = pytest.mark.daemon
__all__ = ["auth_registry", "registry"]  # fixtures, imported for pytest to find

RUN_DOCKERFILE = """
ARG base_image
FROM ${base_image}
USER root
RUN echo published > /published
USER 1000:1000
"""


def tags_on(api: docker.APIClient, host: str) -> list[str]:
    return [
        tag
        for image in api.images()
        for tag in image.get("RepoTags") or []
        if tag.startswith(host)
    ]


def extended_run(layers: Layers, unique_tag: str) -> str:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("test/publish", run=RUN_DOCKERFILE)
    options = ExtendOptions(
        layers=layers.root, app=layers.app, run_tag=f"{unique_tag}-run:latest"
    )
    report = extend(options)
    assert report.run is not None
    return report.run.image


def test_push_uploads_only_the_new_layers_when_the_base_is_there(
    registry: Registry,
    layers: Layers,
    unique_tag: str,
    daemon: Daemon,
    docker_api: docker.APIClient,
) -> None:
    base = push(daemon, RUN_TINY, registry.ref("imgext-it/run:base"))
    base_layers = len(docker_api.inspect_image(RUN_TINY)["RootFS"]["Layers"])
    assert base.uploaded == base_layers

    image = extended_run(layers, unique_tag)
    lines: list[str] = []
    pushed = push(daemon, image, registry.ref("imgext-it/app:1"), on_line=lines.append)
    assert pushed.uploaded == 1
    assert sum(pushed.layers.values()) - pushed.uploaded == base_layers
    assert any("Mounted from" in s or "already exists" in s for s in lines)
    assert pushed.digest == registry.manifest_digest("imgext-it/app", "1")
    # The tag made for the push is gone again.
    assert tags_on(docker_api, registry.host) == []


def test_extend_publish_reports_the_digest(
    registry: Registry,
    layers: Layers,
    unique_tag: str,
    docker_api: docker.APIClient,
    tmp_path: Path,
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("test/publish", run=RUN_DOCKERFILE)
    name = unique_tag.removeprefix("imgext-it/")
    ref = registry.ref(f"imgext-it/{name}-run:1")
    try:
        code = main(
            [
                "extend",
                "--layers",
                str(layers.root),
                "--app",
                str(layers.app),
                "--kind",
                "run",
                "--run-tag",
                ref,
                "--publish",
                "--report",
                str(tmp_path / "report.json"),
                "--quiet",
            ]
        )
        assert code == 0
        run = json.loads((tmp_path / "report.json").read_text())["run"]
        assert run["digest"] == registry.manifest_digest(f"imgext-it/{name}-run", "1")
        assert run["extended"]
    finally:
        for tag in tags_on(docker_api, registry.host):
            docker_api.remove_image(tag, noprune=True)


def test_publish_with_htpasswd_credentials_from_the_docker_config(
    auth_registry: Registry,
    docker_api: docker.APIClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref = auth_registry.ref("imgext-it/private:1")
    report = tmp_path / "published.json"
    code = main(
        ["publish", "--run-image", RUN_TINY, "--run-tag", ref, "--report", str(report)]
    )
    assert code == 0
    [pushed] = json.loads(report.read_text())["run"]
    assert pushed["digest"] == auth_registry.manifest_digest("imgext-it/private", "1")
    output = capsys.readouterr()
    for text in (output.out, output.err, caplog.text, report.read_text()):
        assert PASSWORD not in text
    assert tags_on(docker_api, auth_registry.host) == []


def test_publish_without_credentials_is_refused_cleanly(
    auth_registry: Registry,
    docker_api: docker.APIClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "no-login"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))
    ref = auth_registry.ref("imgext-it/private:2")
    assert main(["publish", "--run-image", RUN_TINY, "--run-tag", ref]) == 105
    error = capsys.readouterr().err
    assert "did not take" in error and ("auth" in error or "unauthorized" in error)
    assert tags_on(docker_api, auth_registry.host) == []


def test_registry_down_is_a_registry_error(
    daemon: Daemon, docker_api: docker.APIClient
) -> None:
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match="did not take"):
        push(daemon, RUN_TINY, f"{host}/imgext-it/down:1")
    assert tags_on(docker_api, host) == []


@pytest.fixture
def dropping_server() -> Iterator[str]:
    """Accepts connections and closes them at once, as a crashing registry would."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.recv(1024)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_dropped_connection_is_a_registry_error(
    dropping_server: str, daemon: Daemon, docker_api: docker.APIClient
) -> None:
    with pytest.raises(RegistryError, match="did not take"):
        push(daemon, RUN_TINY, f"{dropping_server}/imgext-it/dropped:1")
    assert tags_on(docker_api, dropping_server) == []


def test_a_tag_that_named_another_image_is_put_back(
    registry: Registry, daemon: Daemon, docker_api: docker.APIClient
) -> None:
    ref = registry.ref("imgext-it/kept:1")
    docker_api.tag(BUILD_TINY, registry.ref("imgext-it/kept"), "1")
    try:
        pushed = push(daemon, RUN_TINY, ref)
        assert pushed.digest == registry.manifest_digest("imgext-it/kept", "1")
        assert (
            docker_api.inspect_image(ref)["Id"]
            == docker_api.inspect_image(BUILD_TINY)["Id"]
        )
    finally:
        docker_api.remove_image(ref, noprune=True)
