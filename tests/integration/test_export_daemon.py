"""The sparse OCI layout of the extended run image, against the real daemon."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from imgext import Builder, Daemon, ExtendOptions, ImgextError, _export, _save, extend
from imgext._cli import main
from imgext._export import Transfer, write_run_layout, write_sparse_layout
from imgext._inspect import inspect_layout
from imgext._publish import push

from ..conftest import BUILD_TINY, RUN_TINY, Layers
from .conftest_registry import Registry, registry

__all__ = ["registry"]  # a fixture, imported for pytest to find

pytestmark = pytest.mark.daemon


@pytest.fixture(autouse=True)
def own_size_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no remembered layer sizes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


FIRST = """
ARG base_image
FROM ${base_image}
USER root
RUN echo one > /one && mkdir -p /opt/x && echo a > /opt/x/a
ENV FIRST=1
RUN echo more > /opt/x/more
USER 1000:1000
"""
SECOND = """
ARG base_image
FROM ${base_image}
USER root
RUN rm /opt/x/a && echo two > /two && ln -s /two /opt/x/link
LABEL io.buildpacks.rebasable=true
USER 1000:1000
"""


def two_extensions(layers: Layers) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("test/first", run=FIRST)
    layers.extension("test/second", run=SECOND)


def options(layers: Layers, prefix: str, **changes: Any) -> ExtendOptions:
    values: dict[str, Any] = {
        "layers": layers.root,
        "app": layers.app,
        "run_tag": f"{prefix}-run:latest",
        "build_tag": f"{prefix}-build:latest",
    }
    values.update(changes)
    return ExtendOptions(**values)


def blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def oci(path: Path, tmp_path: Path) -> str:
    # skopeo splits `oci:<dir>:<ref>` at colons, and the layout's name has one.
    link = tmp_path / f"layout-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if not link.exists():
        link.symlink_to(path)
    return f"oci:{link}"


def skopeo(*args: str) -> str:
    return subprocess.run(
        ["skopeo", *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("builder", [Builder.BUILDKIT, Builder.CLASSIC])
def test_extend_writes_a_valid_sparse_layout(
    layers: Layers,
    unique_tag: str,
    docker_api: docker.APIClient,
    tmp_path: Path,
    builder: Builder,
) -> None:
    two_extensions(layers)
    report = extend(options(layers, unique_tag, builder=builder))
    assert report.run is not None and report.run.extended is not None
    root = Path(report.run.extended)
    assert root.parent == layers.root / "extended" / "run"

    index = read_json(root / "index.json")
    assert read_json(root / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    [entry] = index["manifests"]
    manifest_bytes = blob(root, entry["digest"]).read_bytes()
    assert root.name == entry["digest"]
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == entry["digest"]
    assert entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    config_bytes = blob(root, manifest["config"]["digest"]).read_bytes()
    assert manifest["config"]["size"] == len(config_bytes)
    config = json.loads(config_bytes)

    image = docker_api.inspect_image(report.run.image)
    base = docker_api.inspect_image(RUN_TINY)
    diff_ids = image["RootFS"]["Layers"]
    base_count = len(base["RootFS"]["Layers"])
    assert config["rootfs"]["diff_ids"] == diff_ids
    assert report.run.top_layer == diff_ids[base_count - 1]
    assert config["config"]["User"] == "1000:1000"
    assert "FIRST=1" in config["config"]["Env"]
    assert config["config"]["Labels"]["io.buildpacks.rebasable"] == "false"

    # Only the extensions' layers have blobs; each one's diff ID matches.
    new = manifest["layers"][base_count:]
    assert len(new) == 3
    for descriptor, diff_id in zip(new, diff_ids[base_count:], strict=True):
        data = blob(root, descriptor["digest"]).read_bytes()
        assert descriptor["mediaType"] == _export.MEDIA_LAYER_GZIP
        assert descriptor["size"] == len(data)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
        unpacked = gzip.decompress(data)
        assert "sha256:" + hashlib.sha256(unpacked).hexdigest() == diff_id
    for descriptor in manifest["layers"][:base_count]:
        assert not blob(root, descriptor["digest"]).exists()
    assert len(list((root / "blobs" / "sha256").iterdir())) == 3 + 2

    # The exporter pairs layers with history entries that are not empty.
    history = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(history) == len(diff_ids)
    owners = [h["created_by"] for h in history[base_count:]]
    assert owners[0].startswith("Layer: '")
    assert owners[0].endswith("', Created by extension: test/first")
    assert "echo one > /one" in owners[0]
    assert owners[1].endswith("Created by extension: test/first")
    assert "echo two > /two" in owners[2]
    assert owners[2].endswith("Created by extension: test/second")

    # An independent reader agrees.
    reference = oci(root, tmp_path)
    assert json.loads(skopeo("inspect", "--raw", reference)) == manifest
    assert json.loads(skopeo("inspect", "--config", "--raw", reference)) == config
    summary = json.loads(skopeo("inspect", reference))
    assert summary["Layers"] == [d["digest"] for d in manifest["layers"]]

    info = inspect_layout(root)
    assert info.top_layer == report.run.top_layer
    assert [layer.extension for layer in info.layers] == [
        "test/first",
        "test/first",
        "test/second",
    ]
    assert info.base == RUN_TINY and info.user == "1000:1000" and not info.rebasable


@pytest.mark.parametrize("transfer", ["save", "push"])
def test_layout_plus_base_reassembles_the_extended_image(
    layers: Layers,
    unique_tag: str,
    daemon: Daemon,
    docker_api: docker.APIClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    transfer: str,
) -> None:
    two_extensions(layers)
    report = extend(options(layers, unique_tag))
    assert report.run is not None and report.run.extended is not None
    if transfer == "push":
        # The first layout came by save, which taught imgext the base's sizes.
        monkeypatch.setenv("IMGEXT_EXPORT_TRANSFER", transfer)
        write_run_layout(daemon, report.run, layers.root / "pushed")
        [pushed] = (layers.root / "pushed" / "run").iterdir()
        assert pushed.name != Path(report.run.extended).name  # other gzip bytes
        report.run.extended = str(pushed)
    full = tmp_path / "full"
    shutil.copytree(report.run.extended, full)
    # Fill in the base's blobs from a save of the original run image: its layers
    # are named by diff ID, as the sparse manifest describes them.
    saved = tmp_path / "base.tar"
    subprocess.run(["docker", "save", "-o", str(saved), RUN_TINY], check=True)
    with tarfile.open(saved) as archive:
        for member in archive:
            if member.name.endswith("layer.tar"):
                source = archive.extractfile(member)
                assert source is not None
                data = source.read()
                blob(full, "sha256:" + hashlib.sha256(data).hexdigest()).write_bytes(
                    data
                )
    loaded = f"{unique_tag}-reassembled:latest"
    skopeo("copy", "--quiet", oci(full, tmp_path), f"docker-daemon:{loaded}")

    assert (
        docker_api.inspect_image(loaded)["RootFS"]["Layers"]
        == docker_api.inspect_image(report.run.image)["RootFS"]["Layers"]
    )
    assert filesystem(docker_api, loaded) == filesystem(docker_api, report.run.image)
    listing = filesystem(docker_api, loaded)
    assert listing["one"][3] == hashlib.sha256(b"one\n").hexdigest()
    assert "opt/x/a" not in listing and listing["opt/x/link"][2] == "/two"


def filesystem(
    api: docker.APIClient, image: str
) -> dict[str, tuple[int, int, str, str | None]]:
    """Every path of an image's file system: mode, owner, link target, content."""
    container = api.create_container(image, command=["true"])
    try:
        data = b"".join(api.export(container["Id"]))
    finally:
        api.remove_container(container["Id"], force=True)
    # The daemon adds these to every container; they are not the image's.
    skipped = (".dockerenv", "dev/", "proc/", "sys/", "etc/host", "etc/resolv")
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive:
            if member.name.startswith(skipped):
                continue
            content = None
            if member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                content = hashlib.sha256(source.read()).hexdigest()
            found[member.name] = (member.mode, member.uid, member.linkname, content)
    return found


def test_a_failing_layout_moves_no_tag_and_leaves_nothing(
    layers: Layers,
    unique_tag: str,
    docker_api: docker.APIClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    two_extensions(layers)
    original = _save.write_blob

    def failing(source: Any, blobs: Path) -> _save.Blob:
        original(source, blobs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_save, "write_blob", failing)
    with pytest.raises(ImgextError, match="No space left"):
        extend(options(layers, unique_tag))
    assert docker_api.images(filters={"reference": f"{unique_tag}-run*"}) == []
    assert list((layers.root / "extended" / "run").iterdir()) == []


def test_an_unwritable_extended_dir_is_a_clear_error(
    layers: Layers, unique_tag: str, docker_api: docker.APIClient, tmp_path: Path
) -> None:
    two_extensions(layers)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    with pytest.raises(ImgextError, match="extended run image's layout"):
        extend(options(layers, unique_tag, extended=blocked))
    assert docker_api.images(filters={"reference": f"{unique_tag}-run*"}) == []


def test_layout_only_for_an_extended_run_image(layers: Layers, unique_tag: str) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("test/build-only", build=FIRST)
    report = extend(options(layers, unique_tag))
    assert report.run is None
    assert not (layers.root / "extended").exists()


def test_rerun_replaces_the_layout_and_cli_takes_extended(
    layers: Layers, unique_tag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two_extensions(layers)
    elsewhere = tmp_path / "out"
    common = [
        "extend",
        "--layers",
        str(layers.root),
        "--app",
        str(layers.app),
        "--run-tag",
        f"{unique_tag}-run:latest",
        "--kind",
        "run",
        "--extended",
        str(elsewhere),
        "--report",
        str(tmp_path / "report.json"),
        "--quiet",
    ]
    assert main(common) == 0
    first = read_json(tmp_path / "report.json")["run"]["extended"]
    # The build_id differs every time, but these Dockerfiles never read it, so
    # the daemon's cache gives the same layers; --no-cache gives new ones.
    assert main([*common, "--no-cache"]) == 0
    second = read_json(tmp_path / "report.json")["run"]["extended"]
    assert first != second
    assert [p.name for p in (elsewhere / "run").iterdir()] == [Path(second).name]

    capsys.readouterr()
    assert main(["inspect", str(elsewhere), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"] == second
    assert [layer["extension"] for layer in shown["layers"]] == [
        "test/first",
        "test/first",
        "test/second",
    ]


def layout_parts(root: Path) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    manifest = read_json(blob(root, root.name))
    config = read_json(blob(root, manifest["config"]["digest"]))
    names = {"sha256:" + p.name for p in (root / "blobs" / "sha256").iterdir()}
    return manifest, config, names


def test_push_transfer_writes_what_save_writes(
    layers: Layers, unique_tag: str, daemon: Daemon, docker_api: docker.APIClient
) -> None:
    two_extensions(layers)
    report = extend(options(layers, unique_tag, extended=layers.root / "unused"))
    assert report.run is not None
    image = docker_api.inspect_image(report.run.image)
    base = docker_api.inspect_image(RUN_TINY)
    common: dict[str, Any] = {
        "image": report.run.image,
        "diff_ids": image["RootFS"]["Layers"],
        "base_layers": len(base["RootFS"]["Layers"]),
        "base_history": len(docker_api.history(RUN_TINY)),
        "owners": [],
    }
    # The save remembers the base's layer sizes, which the push needs.
    by_save = write_sparse_layout(
        daemon, extended=layers.root / "save", transfer=Transfer.SAVE, **common
    )
    by_push = write_sparse_layout(
        daemon, extended=layers.root / "push", transfer=Transfer.PUSH, **common
    )
    saved, pushed = layout_parts(by_save), layout_parts(by_push)
    count = common["base_layers"]
    assert saved[0]["config"] == pushed[0]["config"]
    assert saved[0]["layers"][:count] == pushed[0]["layers"][:count]
    new = pushed[0]["layers"][count:]
    assert pushed[2] == {d["digest"] for d in new} | {
        by_push.name,
        pushed[0]["config"]["digest"],
    }
    for descriptor, diff_id in zip(new, common["diff_ids"][count:], strict=True):
        data = blob(by_push, descriptor["digest"]).read_bytes()
        assert descriptor["size"] == len(data)
        assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id
    assert not tags_on(docker_api, "127.0.0.1")
    # Nor does the image keep a digest reference to the registry that is gone.
    digests = docker_api.inspect_image(report.run.image).get("RepoDigests") or []
    assert not [d for d in digests if d.startswith("127.0.0.1")]


def test_push_transfer_falls_back_when_the_daemon_knows_a_new_layer(
    registry: Registry,
    layers: Layers,
    unique_tag: str,
    daemon: Daemon,
    docker_api: docker.APIClient,
) -> None:
    two_extensions(layers)
    report = extend(options(layers, unique_tag, extended=layers.root / "unused"))
    assert report.run is not None
    # Once pushed anywhere, the new layers' digests are known to the daemon,
    # which would then skip them on the push transfer too.
    push(daemon, report.run.image, registry.ref("imgext-it/known:1"))
    write_run_layout(daemon, report.run, layers.root / "save")  # remembers sizes
    image = docker_api.inspect_image(report.run.image)
    root = write_sparse_layout(
        daemon,
        image=report.run.image,
        diff_ids=image["RootFS"]["Layers"],
        base_layers=3,
        base_history=len(docker_api.history(RUN_TINY)),
        owners=[],
        extended=layers.root / "push",
        transfer=Transfer.PUSH,
    )
    manifest, _, names = layout_parts(root)
    assert {d["digest"] for d in manifest["layers"][3:]} <= names
    assert len(names) == 3 + 2


def tags_on(api: docker.APIClient, prefix: str) -> list[str]:
    return [
        tag
        for image in api.images()
        for tag in image.get("RepoTags") or []
        if tag.startswith(prefix)
    ]


def test_an_unchanged_image_reuses_its_layout_in_another_layers_dir(
    layers: Layers, unique_tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_extensions(layers)
    first = extend(options(layers, unique_tag, extended=layers.root / "one"))
    assert first.run is not None and first.run.extended is not None

    def no_transfer(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was read from the daemon again")

    monkeypatch.setattr(_export, "collect_by_save", no_transfer)
    monkeypatch.setattr(_export, "collect_by_push", no_transfer)
    second = extend(options(layers, unique_tag, extended=layers.root / "two"))
    assert second.run is not None and second.run.extended is not None
    assert second.run.image == first.run.image
    one, two = Path(first.run.extended), Path(second.run.extended)
    assert one.name == two.name
    assert layout_parts(one) == layout_parts(two)
