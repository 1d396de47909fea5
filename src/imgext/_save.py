"""The save transfer: the extended image's new layers out of one `docker save`.

The save is streamed; the base layers' entries are read past without being
written anywhere, and each new layer is gzipped into a blob as it passes, its
diff ID and digest hashed on the way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker.errors
import requests
import urllib3.exceptions

from ._daemon import Daemon
from ._errors import DaemonError, ImgextError

log = logging.getLogger("imgext")

CHUNK = 1 << 20
# Extension layers are written once and read once by the exporter: favour speed.
_GZIP_LEVEL = 1
# What the daemon's `docker save` (Engine 20.10 to 24) hashes into the name of
# every layer directory but the top one; see `legacy_layer_ids`.
_LEGACY_CONTAINER_CONFIG = (
    '{"Hostname":"","Domainname":"","User":"","AttachStdin":false,'
    '"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
    '"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,'
    '"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null}'
)
# TODO: the daemon writes this epoch in its own time zone; one not in UTC makes
# every prediction miss, which costs a second save (still a correct layout).
_LEGACY_CREATED = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Blob:
    """A gzipped layer written into the layout."""

    diff_id: str
    digest: str
    size: int


@dataclass(frozen=True)
class Collected:
    """What the layout needs from the daemon, whichever way it came."""

    config: bytes
    base_sizes: list[int]
    new_blobs: list[Blob]


@dataclass
class _Save:
    """What one pass over `docker save` learned."""

    config: bytes | None = None
    manifest: list[dict[str, Any]] | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)
    layer_names: list[str] = field(default_factory=list)


def collect_by_save(
    daemon: Daemon, image: str, diff_ids: list[str], base_layers: int, blobs: Path
) -> Collected:
    """Stream `docker save` once; a second time only if a layer went unrecognised."""
    wanted = _predicted_entries(image, diff_ids, base_layers)
    save = _read_save(daemon, image, wanted, blobs)
    names = save.layer_names = _layer_entries(save, image)
    if len(names) != len(diff_ids):
        raise DaemonError(
            f"the daemon's save of {image} lists {len(names)} layers, "
            f"its config {len(diff_ids)}"
        )
    missing = {
        names[i]: i
        for i in range(base_layers, len(diff_ids))
        if names[i] not in save.blobs
    }
    if missing:
        # TODO: the daemon saved layers under names imgext does not predict (a new
        # Engine or the containerd image store); this costs a second save.
        log.debug(
            "%d new layers were not recognised while streaming; saving again",
            len(missing),
            extra={"phase": "extend run"},
        )
        retry = _Wanted(set(missing), config_names=wanted.config_names)
        again = _read_save(daemon, image, retry, blobs)
        save.blobs.update(again.blobs)
    for index in range(base_layers, len(diff_ids)):
        blob = save.blobs.get(names[index])
        if blob is None or blob.diff_id != diff_ids[index]:
            raise ImgextError(
                f"the daemon's save of {image} does not hold layer {index} "
                f"({diff_ids[index]}) as its config says"
            )
    assert save.config is not None
    return Collected(
        config=save.config,
        base_sizes=[save.sizes.get(n, 0) for n in names[:base_layers]],
        new_blobs=[save.blobs[n] for n in names[base_layers:]],
    )


@dataclass
class _Wanted:
    """Which entries of the save to keep, by name or by what their `json` says."""

    names: set[str]
    top_legacy_layer: bool = False
    config_names: set[str] = field(default_factory=set)

    def keeps(self, name: str, top_dirs: set[str]) -> bool:
        if name in self.names:
            return True
        directory = name.rpartition("/")[0]
        return (
            self.top_legacy_layer
            and name.endswith("/layer.tar")
            and (directory in top_dirs)
        )


def _predicted_entries(image: str, diff_ids: list[str], base_layers: int) -> _Wanted:
    hex_id = image.removeprefix("sha256:")
    new = diff_ids[base_layers:]
    names = {f"blobs/sha256/{d.removeprefix('sha256:')}" for d in new}
    legacy = legacy_layer_ids(diff_ids)
    names |= {f"{legacy[i]}/layer.tar" for i in range(base_layers, len(diff_ids) - 1)}
    return _Wanted(
        names=names,
        top_legacy_layer=bool(new),
        config_names={f"{hex_id}.json", f"blobs/sha256/{hex_id}"},
    )


def legacy_layer_ids(diff_ids: list[str]) -> list[str]:
    """The directory names `docker save` gives layers in its legacy format.

    Every layer but the top one is named by a hash of a fixed v1 image JSON,
    the layer's chain ID and its parent's name; the top one's JSON is the whole
    image config, so it is recognised by that instead.
    """
    names: list[str] = []
    chain: str | None = None
    parent: str | None = None
    for diff_id in diff_ids:
        chain = sha256_digest(f"{chain} {diff_id}".encode()) if chain else diff_id
        text = (
            f'{{"container_config":{_LEGACY_CONTAINER_CONFIG},'
            f'"created":"{_LEGACY_CREATED}","layer_id":"{chain}"'
        )
        if parent:
            text += f',"parent":"{parent}"'
        parent = sha256_digest((text + "}").encode())
        names.append(parent.removeprefix("sha256:"))
    return names


def _read_save(daemon: Daemon, image: str, wanted: _Wanted, blobs: Path) -> _Save:
    save = _Save()
    top_dirs: set[str] = set()
    try:
        chunks = daemon.client.get_image(image, chunk_size=CHUNK)
        reader: Any = _ChunkReader(chunks)
        with tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK) as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                save.sizes[name] = member.size
                if name.endswith("/json") and wanted.top_legacy_layer:
                    if _is_top_layer_json(_read_member(archive, member)):
                        top_dirs.add(name.rpartition("/")[0])
                elif name == "manifest.json":
                    manifest = json.loads(_read_member(archive, member))
                    save.manifest = manifest if isinstance(manifest, list) else None
                elif name in wanted.config_names:
                    save.config = _read_member(archive, member)
                elif wanted.keeps(name, top_dirs):
                    source = archive.extractfile(member)
                    assert source is not None
                    save.blobs[name] = write_blob(source, blobs)
    except (
        docker.errors.APIError,
        requests.RequestException,
        urllib3.exceptions.HTTPError,
    ) as exc:
        raise DaemonError(f"the daemon failed to save {image}: {exc}") from None
    except tarfile.TarError as exc:
        raise DaemonError(f"the daemon's save of {image} is not a tar: {exc}") from None
    if save.config is None or not save.manifest:
        raise DaemonError(f"the daemon's save of {image} lacks its config or manifest")
    return save


def _is_top_layer_json(data: bytes) -> bool:
    # Only the top layer's v1 JSON carries the image's run config.
    try:
        return isinstance(json.loads(data).get("config"), dict)
    except (ValueError, AttributeError):
        return False


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > 64 << 20:
        raise DaemonError(f"unexpectedly large metadata entry {member.name} in a save")
    source = archive.extractfile(member)
    return source.read() if source is not None else b""


def write_blob(source: IO[bytes], blobs: Path) -> Blob:
    """Gzip a layer into `blobs`, hashing both forms as the bytes pass."""
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
    diff = hashlib.sha256()
    digest = hashlib.sha256()
    size = 0
    handle, partial = tempfile.mkstemp(dir=blobs, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := source.read(CHUNK):
                diff.update(chunk)
                packed = compressor.compress(chunk)
                digest.update(packed)
                out.write(packed)
                size += len(packed)
            packed = compressor.flush()
            digest.update(packed)
            out.write(packed)
            size += len(packed)
        os.replace(partial, blobs / digest.hexdigest())
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return Blob(f"sha256:{diff.hexdigest()}", f"sha256:{digest.hexdigest()}", size)


def _layer_entries(save: _Save, image: str) -> list[str]:
    assert save.manifest is not None
    entry = next(
        (m for m in save.manifest if _config_matches(m.get("Config", ""), image)),
        save.manifest[0],
    )
    return [str(name).removeprefix("./") for name in entry.get("Layers") or []]


def _config_matches(name: str, image: str) -> bool:
    return image.removeprefix("sha256:") in name


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class _ChunkReader:
    """A read-only file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._head = b""

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return self._head + b"".join(self._chunks)
        # Pieces are joined once: growing one bytes object chunk by chunk would
        # copy each byte many times over, which shows on images of gigabytes.
        pieces = [self._head]
        have = len(self._head)
        while have < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            pieces.append(chunk)
            have += len(chunk)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if len(data) <= size:
            self._head = b""
            return data
        self._head = data[size:]
        return data[:size]
