"""Shared fixtures. Tests marked `daemon` run against the real Docker daemon and
the base images `scripts/test-images.sh` makes; they fail, never skip, when the
daemon is missing, unless IMGEXT_SKIP_DAEMON=1 is set for a quick local run."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from imgext import Daemon

BUILD_TINY = "imgext-test/build:tiny"
RUN_TINY = "imgext-test/run:tiny"
RUN_ALT_TINY = "imgext-test/run-alt:tiny"
BUILD_BOOKWORM = "imgext-test/build:bookworm"
RUN_BOOKWORM = "imgext-test/run:bookworm"
RUN_ALT_BOOKWORM = "imgext-test/run-alt:bookworm"


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if os.environ.get("IMGEXT_SKIP_DAEMON") != "1":
        return
    skip = pytest.mark.skip(reason="IMGEXT_SKIP_DAEMON=1")
    for item in items:
        if "daemon" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_api() -> docker.APIClient:
    client = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
    client.ping()
    return client


@pytest.fixture(scope="session")
def daemon(docker_api: docker.APIClient) -> Daemon:
    return Daemon.connect()


@pytest.fixture
def unique_tag(docker_api: docker.APIClient) -> Iterator[str]:
    """A tag prefix of this test's own; every tag under it is removed after."""
    prefix = f"imgext-it/{uuid.uuid4().hex[:10]}"
    yield prefix
    # Every image, not a reference filter: its `*` stops at a `/`, and tests
    # name tags both `<prefix>-x:1` and `<prefix>/x:1`.
    for image in docker_api.images():
        for tag in image.get("RepoTags") or []:
            if tag.startswith(prefix):
                docker_api.remove_image(tag, noprune=True)


class Layers:
    """A `<layers>` directory laid out as the generate phase leaves it."""

    def __init__(self, root: Path, platform_api: str = "0.13") -> None:
        self.root = root
        self.platform_api = platform_api
        self.generated = root / "generated"
        self.app = root.parent / "app"
        self.generated.mkdir(parents=True, exist_ok=True)
        self.app.mkdir(exist_ok=True)
        self._group: list[str] = []

    @property
    def new_layout(self) -> bool:
        major, minor = (int(p) for p in self.platform_api.split("."))
        return (major, minor) >= (0, 13)

    def analyzed(self, build: str | None, run: str | None) -> None:
        text = ""
        if build:
            text += f'[build-image]\nreference = "{build}"\n'
        if run:
            text += f'[run-image]\nreference = "{run}"\n'
        (self.root / "analyzed.toml").write_text(text)

    def extension(
        self,
        extension_id: str,
        *,
        build: str | None = None,
        run: str | None = None,
        build_args: dict[str, str] | None = None,
        run_args: dict[str, str] | None = None,
    ) -> Path:
        """Add an extension to the group and write its outputs; return its folder."""
        self._group.append(extension_id)
        self._write_group()
        name = extension_id.replace("/", "_")
        config = ""
        for kind, args in (("build", build_args), ("run", run_args)):
            for key, value in (args or {}).items():
                config += f'[[{kind}.args]]\nname = "{key}"\nvalue = "{value}"\n'
        folder = self.generated / name
        for kind, text in (("build", build), ("run", run)):
            if text is None:
                continue
            if self.new_layout:
                target = folder / f"{kind}.Dockerfile"
                config_path = folder / "extend-config.toml"
            else:
                target = self.generated / kind / name / "Dockerfile"
                config_path = target.parent / "extend-config.toml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(text).lstrip())
            if config:
                config_path.write_text(config)
        return folder

    def _write_group(self) -> None:
        text = "".join(
            f'[[group-extensions]]\nid = "{i}"\nversion = "0.0.1"\napi = "0.10"\n'
            for i in self._group
        )
        (self.root / "group.toml").write_text(text)


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers(tmp_path / "layers")
