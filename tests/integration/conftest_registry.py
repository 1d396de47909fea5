"""Real registries for the publish tests: Debian's `docker-registry` on loopback.

The daemon treats registries on 127.0.0.0/8 as insecure, so plain HTTP works
for pushes, and the htpasswd variant works without TLS there too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.utils import kwargs_from_env

USER = "imgext-user"
PASSWORD = "s3cret-imgext-pass"


@dataclass(frozen=True)
class Registry:
    """A running registry; `docker_config` holds credentials for it, if any."""

    host: str
    docker_config: Path | None = None

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                "application/vnd.oci.image.manifest.v1+json"
            },
        )
        if self.docker_config is not None:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                digest = response.headers.get("Docker-Content-Digest")
                return str(digest) if digest else None
        except urllib.error.HTTPError:
            return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(root: Path, htpasswd: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    auth = (
        f"auth:\n  htpasswd:\n    realm: imgext\n    path: {htpasswd}\n"
        if htpasswd
        else ""
    )
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=log
    )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
            return process, host
        except urllib.error.HTTPError:
            return process, host  # 401: up, and asking for credentials
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log')}")


def forget_digests(host: str) -> None:
    """Drop the `host/...@sha256:` references the daemon keeps after a push."""
    api = docker.APIClient(version="auto", **kwargs_from_env())
    for image in api.images():
        for ref in image.get("RepoDigests") or []:
            if ref.startswith(f"{host}/"):
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_image(ref, noprune=True)


def _stop(process: subprocess.Popen[bytes], host: str) -> None:
    forget_digests(host)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry that takes anonymous pushes."""
    root = tmp_path / "registry"
    root.mkdir()
    process, host = _serve(root, None)
    try:
        yield Registry(host)
    finally:
        _stop(process, host)


@pytest.fixture
def auth_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Registry]:
    """A registry behind htpasswd; DOCKER_CONFIG points at a config with the login."""
    root = tmp_path / "auth-registry"
    root.mkdir()
    htpasswd = root / "htpasswd"
    htpasswd.write_text(
        subprocess.run(
            ["htpasswd", "-Bbn", USER, PASSWORD],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    process, host = _serve(root, htpasswd)
    config_dir = root / "docker-config"
    config_dir.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {host: {"auth": token}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    try:
        yield Registry(host, config_dir)
    finally:
        _stop(process, host)
