"""The sparse layout writer, fed synthetic `docker save` streams."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgext import ImgextError, _export, _save
from imgext._export import LayerOwner, write_sparse_layout
from imgext._inspect import inspect_layout
from imgext._save import legacy_layer_ids


@pytest.fixture(autouse=True)
def own_size_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


LAYERS = [
    layer_tar({f"file{i}": f"content {i}\n".encode() * (i + 1)}) for i in range(4)
]
DIFF_IDS = [sha(layer) for layer in LAYERS]
HISTORY = [
    {"created": "2026-01-01T00:00:00Z", "created_by": "base 0"},
    {"created": "2026-01-01T00:00:01Z", "created_by": "base 1"},
    {"created_by": "LABEL base", "empty_layer": True},
    {"created": "2026-01-02T00:00:00Z", "created_by": "RUN first"},
    {"created_by": "ENV A=1", "empty_layer": True},
    {"created": "2026-01-02T00:00:01Z", "created_by": "RUN second"},
]
CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": "1000:1000", "Labels": {"io.buildpacks.rebasable": "true"}},
        "rootfs": {"type": "layers", "diff_ids": DIFF_IDS},
        "history": HISTORY,
    }
).encode()
IMAGE = sha(CONFIG)


def save_tar(*, oci_names: bool = False, rename: dict[int, str] | None = None) -> bytes:
    """A `docker save` as Engine 20.10 writes it, or with blobs by diff ID."""
    names = legacy_layer_ids(DIFF_IDS)
    names[-1] = "f" * 64  # the top layer's name hashes the whole config
    for index, name in (rename or {}).items():
        names[index] = name
    entries: list[tuple[str, bytes]] = []
    paths = []
    for index, (name, data) in enumerate(zip(names, LAYERS, strict=True)):
        v1: dict[str, Any] = {"id": name}
        if index == len(LAYERS) - 1:
            v1["config"] = {"User": "1000:1000"}
        if oci_names:
            path = f"blobs/sha256/{DIFF_IDS[index].removeprefix('sha256:')}"
        else:
            path = f"{name}/layer.tar"
            entries += [
                (f"{name}/VERSION", b"1.0"),
                (f"{name}/json", json.dumps(v1).encode()),
            ]
        entries.append((path, data))
        paths.append(path)
    entries.sort()
    config_name = f"{IMAGE.removeprefix('sha256:')}.json"
    entries.append((config_name, CONFIG))
    manifest = [{"Config": config_name, "RepoTags": None, "Layers": paths}]
    entries.append(("manifest.json", json.dumps(manifest).encode()))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


class FakeClient:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.saves = 0

    def get_image(self, image: str, chunk_size: int) -> Iterator[bytes]:
        assert image == IMAGE
        self.saves += 1
        # Odd chunk sizes exercise the reader's buffering.
        for start in range(0, len(self.data), 7001):
            yield self.data[start : start + 7001]


class FakeDaemon:
    def __init__(self, data: bytes) -> None:
        self.client = FakeClient(data)


def write(daemon: Any, tmp_path: Path) -> Path:
    return write_sparse_layout(
        daemon,
        image=IMAGE,
        diff_ids=DIFF_IDS,
        base_layers=2,
        base_history=3,
        owners=[LayerOwner("ext/one", 3), LayerOwner("ext/two", 4)],
        extended=tmp_path / "extended",
        base_name="example/run:base",
    )


def test_legacy_names_match_what_engine_20_10_saved() -> None:
    # Diff IDs and directory names of a real `docker save` of a busybox image.
    diff_ids = [
        "sha256:2e0ae73f4adbab79e2d0c05d045c9808605662bf9713903b5a312c1117274fe6",
        "sha256:271366c10c042b41f1786bf7e203d4b6a384fc7517dc7fd11e5127661efef1c3",
        "sha256:e870768cd1aada7f5d3f0cfabbb7a70eeaa9d05586deb9d60b5dfd2e0ffe1bf4",
    ]
    assert legacy_layer_ids(diff_ids) == [
        "13ce603695187214a00abf9a89668c358a0e4ff7ab0f08eb5289a0282b63da28",
        "ba61e5afbae902909deb137a7e59ea7d94f58af372d241f728185385415214d8",
        "ea6dafcd5c250f57c89216d56e96b95e307244e8b2638ae299340cbfb4a4d7d1",
    ]


@pytest.mark.parametrize("oci_names", [False, True])
def test_layout_holds_only_the_new_layers(tmp_path: Path, oci_names: bool) -> None:
    daemon = FakeDaemon(save_tar(oci_names=oci_names))
    root = write(daemon, tmp_path)
    assert daemon.client.saves == 1
    index = json.loads((root / "index.json").read_bytes())
    digest = index["manifests"][0]["digest"]
    assert root.name == digest
    blobs = root / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.removeprefix("sha256:")).read_bytes())
    assert manifest["annotations"] == {
        "org.opencontainers.image.base.name": "example/run:base"
    }
    base, new = manifest["layers"][:2], manifest["layers"][2:]
    assert [d["digest"] for d in base] == DIFF_IDS[:2]
    assert [d["size"] for d in base] == [len(layer) for layer in LAYERS[:2]]
    assert {d["mediaType"] for d in base} == {_export.MEDIA_LAYER}
    for descriptor, layer in zip(new, LAYERS[2:], strict=True):
        data = (blobs / descriptor["digest"].removeprefix("sha256:")).read_bytes()
        assert gzip.decompress(data) == layer
        assert descriptor["size"] == len(data) and sha(data) == descriptor["digest"]
    assert len(list(blobs.iterdir())) == 2 + 2
    assert not list((tmp_path / "extended" / "run").glob(".imgext-*"))


def test_history_names_each_new_layers_extension(tmp_path: Path) -> None:
    root = write(FakeDaemon(save_tar()), tmp_path)
    info = inspect_layout(root)
    assert info.base_layers == 2 and info.top_layer == DIFF_IDS[1]
    assert [(layer.extension, layer.created_by) for layer in info.layers] == [
        ("ext/one", "RUN first"),
        ("ext/two", "RUN second"),
    ]
    manifest = json.loads(
        (root / "blobs" / "sha256" / root.name.removeprefix("sha256:")).read_bytes()
    )
    config_path = root / "blobs" / "sha256" / manifest["config"]["digest"][7:]
    history = json.loads(config_path.read_bytes())["history"]
    # The base's entries stay, the extensions' empty ones go, as in the lifecycle.
    assert history[:3] == HISTORY[:3]
    assert history[3:] == [
        {
            "created": "2026-01-02T00:00:00Z",
            "created_by": "Layer: 'RUN first', Created by extension: ext/one",
        },
        {
            "created": "2026-01-02T00:00:01Z",
            "created_by": "Layer: 'RUN second', Created by extension: ext/two",
        },
    ]


def test_inspect_shows_base_top_layer_and_extension_layers(tmp_path: Path) -> None:
    info = inspect_layout(write(FakeDaemon(save_tar()), tmp_path))
    text = info.to_text()
    assert "base        example/run:base (2 layer(s))" in text
    assert f"top layer   {DIFF_IDS[1]}" in text
    assert "user        1000:1000" in text and "rebasable   true" in text
    assert "extension layers: 2" in text
    assert "ext/one" in text and "RUN second" in text
    assert json.loads(info.to_json())["layers"][1]["extension"] == "ext/two"


def test_unpredicted_names_cost_a_second_save(tmp_path: Path) -> None:
    daemon = FakeDaemon(save_tar(rename={2: "e" * 64}))
    root = write(daemon, tmp_path)
    assert daemon.client.saves == 2
    assert len(inspect_layout(root).layers) == 2


def test_a_layer_that_does_not_match_its_diff_id_is_an_error(tmp_path: Path) -> None:
    data = save_tar(oci_names=True)
    # Same length, other bytes: what a corrupt or compressed save would give.
    corrupt = data.replace(b"content 3\n", b"CONTENT 3\n")
    with pytest.raises(ImgextError, match="does not hold layer 3"):
        write(FakeDaemon(corrupt), tmp_path)
    assert list((tmp_path / "extended" / "run").iterdir()) == []


def test_same_layout_twice_is_kept_and_older_ones_go(tmp_path: Path) -> None:
    stale = tmp_path / "extended" / "run" / ("sha256:" + "0" * 64)
    stale.mkdir(parents=True)
    first = write(FakeDaemon(save_tar()), tmp_path)
    second = write(FakeDaemon(save_tar()), tmp_path)
    assert first == second
    assert list((tmp_path / "extended" / "run").iterdir()) == [first]


def test_chunk_reader_returns_exact_sizes() -> None:
    reader = _save._ChunkReader(iter([b"ab", b"", b"cde", b"f"]))
    assert reader.read(4) == b"abcd"
    assert reader.read(10) == b"ef"
    assert reader.read(1) == b""
