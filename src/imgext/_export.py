"""Hand the extended run image to the exporter as a sparse OCI image layout.

The layout at `<extended>/run/<manifest digest>/` holds the index, the manifest,
the config and the blobs of only the layers the extensions added; the exporter
takes the base layers from the original run image. Two ways to get the layers:

- push: the daemon pushes the image to a registry in this process that claims
  to hold every blob the daemon asks about, so only layers whose compressed
  digest the daemon does not know (the new ones) cross, already gzipped. It
  needs a local daemon that knows the base's digests (it pulled or pushed the
  base) and the base layers' sizes, remembered from an earlier save.
- save: one streamed `docker save`; base layer entries are read past without
  being written anywhere, new ones are gzipped into blobs on the fly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import docker.errors
import requests

from ._daemon import Daemon
from ._errors import DaemonError, ImgextError, UsageError
from ._report import ImageReport, write_atomically
from ._save import Collected, collect_by_save, sha256_digest
from ._sink import collect_by_push

log = logging.getLogger("imgext")

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
EXTENSION_LAYER_NAME = "Layer: '{created_by}', Created by extension: {extension}"
BASE_NAME_ANNOTATION = "org.opencontainers.image.base.name"
# Recorded on the index entry so that an unchanged image is not written again.
SOURCE_ANNOTATION = "io.imgext.source"
# How many layouts the user's cache keeps for other layers directories.
_CACHED_LAYOUTS = 16


class Transfer(StrEnum):
    """How layers get from the daemon into the layout."""

    AUTO = "auto"
    PUSH = "push"
    SAVE = "save"


@dataclass(frozen=True)
class LayerOwner:
    """The extension whose Dockerfile left the image with `layers` layers."""

    extension: str
    layers: int


def write_run_layout(daemon: Daemon, report: ImageReport, extended: Path) -> Path:
    """Write the sparse layout of the extended run image; return its directory."""
    image = daemon.inspect_image(report.image)
    base = daemon.inspect_image(report.base_id)
    if image is None or base is None:
        raise DaemonError(
            f"the extended run image {report.image} or its base {report.base_id} "
            "left the daemon before its layout was written"
        )
    owners = []
    for step in report.steps:
        info = daemon.inspect_image(step.image) or {}
        owners.append(LayerOwner(step.extension, len(_diff_ids(info))))
    return write_sparse_layout(
        daemon,
        image=report.image,
        diff_ids=_diff_ids(image),
        base_layers=len(_diff_ids(base)),
        base_history=_history_length(daemon, report.base_id),
        owners=owners,
        extended=extended,
        base_name=report.base,
        base_pulled=bool(base.get("RepoDigests")),
        transfer=_transfer_from_env(),
    )


def _transfer_from_env() -> Transfer:
    value = os.environ.get("IMGEXT_EXPORT_TRANSFER") or "auto"
    try:
        return Transfer(value)
    except ValueError:
        choices = ", ".join(t.value for t in Transfer)
        raise UsageError(
            f"IMGEXT_EXPORT_TRANSFER={value!r} is none of {choices}"
        ) from None


def write_sparse_layout(
    daemon: Daemon,
    *,
    image: str,
    diff_ids: list[str],
    base_layers: int,
    base_history: int,
    owners: list[LayerOwner],
    extended: Path,
    base_name: str | None = None,
    base_pulled: bool = False,
    transfer: Transfer = Transfer.AUTO,
) -> Path:
    """Write `<extended>/run/<digest>`; the first `base_layers` are the base's.

    `base_pulled` says the base has been pulled or pushed, so the daemon knows
    its layers' compressed digests: what makes the push transfer pay.
    """
    parent = extended / "run"
    source = _source_key(image, base_layers, base_history, owners, base_name)
    # A transfer asked for by name always runs; AUTO may reuse earlier work.
    reuse = transfer is Transfer.AUTO
    reused = _existing_layout(parent, source) if reuse else None
    if reused is not None:
        # Nothing changed since the layout was written (a warm rebuild gives
        # the same image ID): reading the image from the daemon again would
        # cost a save or a push for the same bytes.
        _remove_older_layouts(parent, keep=reused)
        log.debug("kept %s: same image", reused, extra={"phase": "extend run"})
        return reused
    try:
        parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(dir=parent, prefix=".imgext-"))
    except OSError as exc:
        raise _layout_error(parent, exc) from None
    cached = _cache_root() / "layouts" / source.removeprefix("sha256:")
    try:
        digest = _layout_digest(cached, source) if reuse else None
        if digest is not None:
            # The same image was written for another layers directory before
            # (each build of a platform gets a fresh one): copy, don't save.
            _copy_tree(cached, temporary)
        else:
            blobs_dir = temporary / "blobs" / "sha256"
            blobs_dir.mkdir(parents=True)
            collected = _collect(
                daemon, image, diff_ids, base_layers, blobs_dir, transfer, base_pulled
            )
            config = _rewrite_history(
                _json_object(collected.config),
                base_layers=base_layers,
                base_history=base_history,
                owners=owners,
            )
            layers = _layer_descriptors(collected, diff_ids)
            annotations = {BASE_NAME_ANNOTATION: base_name} if base_name else {}
            digest = _write_layout(temporary, config, layers, annotations, source)
            _make_readable(temporary)
            _remember_layout(temporary, cached)
        target = parent / digest
        if target.exists():
            # Same digest, same content: the layout is already there.
            shutil.rmtree(temporary)
        else:
            os.rename(temporary, target)
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise _layout_error(parent, exc) from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _remove_older_layouts(parent, keep=target)
    log.debug(
        "wrote %s: %d of %d layers are the extensions'",
        target,
        len(diff_ids) - base_layers,
        len(diff_ids),
        extra={"phase": "extend run"},
    )
    return target


def _layout_error(parent: Path, exc: OSError) -> ImgextError:
    return ImgextError(
        f"cannot write the extended run image's layout under {parent}: {exc}",
        hint="check the --extended directory (default <layers>/extended)",
    )


def _collect(
    daemon: Daemon,
    image: str,
    diff_ids: list[str],
    base_layers: int,
    blobs: Path,
    transfer: Transfer,
    base_pulled: bool,
) -> Collected:
    cache = _LayerCache()
    base_sizes = [cache.size(d) for d in diff_ids[:base_layers]]
    known = [size for size in base_sizes if size is not None]
    # Without every base layer's size the manifest cannot be written, and only
    # a save tells the sizes; a save remembers them for the next time.
    if len(known) == base_layers and (
        transfer is Transfer.PUSH
        or (transfer is Transfer.AUTO and base_pulled and _is_local(daemon))
    ):
        withhold = {image} | cache.digests(diff_ids[base_layers:])
        collected = collect_by_push(
            daemon, image, diff_ids, base_layers, blobs, known, withhold
        )
        if collected is not None:
            cache.remember(digests=((b.diff_id, b.digest) for b in collected.new_blobs))
            return collected
        # Whatever the push left is discarded; the save starts afresh.
        shutil.rmtree(blobs)
        blobs.mkdir()
    collected = collect_by_save(daemon, image, diff_ids, base_layers, blobs)
    cache.remember(sizes=zip(diff_ids, collected.base_sizes, strict=False))
    return collected


def _is_local(daemon: Daemon) -> bool:
    # A daemon behind TCP or ssh may sit on another machine, where 127.0.0.1
    # is not this process.
    return str(daemon.client.base_url).startswith("http+docker://")


class _LayerCache:
    """What imgext learned about layers, by diff ID, remembered across runs.

    `sizes`: the uncompressed size, which a layout's base descriptors need and
    only a save tells. `digests`: compressed digests the daemon gave a new
    layer in an earlier push transfer; the daemon skips a layer whose digest it
    knows, so the sink must say these are missing.
    """

    _LIMIT = 20000

    def __init__(self) -> None:
        self.path = _cache_root() / "layers.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self._sizes: dict[str, int] = dict(data.get("sizes") or {})
        self._digests: dict[str, list[str]] = dict(data.get("digests") or {})

    def size(self, diff_id: str) -> int | None:
        size = self._sizes.get(diff_id)
        return size if isinstance(size, int) else None

    def digests(self, diff_ids: Iterable[str]) -> set[str]:
        return {d for diff_id in diff_ids for d in self._digests.get(diff_id, [])}

    def remember(
        self,
        sizes: Iterable[tuple[str, int]] = (),
        digests: Iterable[tuple[str, str]] = (),
    ) -> None:
        before = (dict(self._sizes), dict(self._digests))
        self._sizes.update(sizes)
        for diff_id, digest in digests:
            known = self._digests.setdefault(diff_id, [])
            if digest not in known:
                known.append(digest)
        if (self._sizes, self._digests) == before:
            return
        data = {
            "sizes": dict(list(self._sizes.items())[-self._LIMIT :]),
            "digests": dict(list(self._digests.items())[-self._LIMIT :]),
        }
        try:
            write_atomically(self.path, json.dumps(data))
        except OSError as exc:
            log.debug("cannot remember layers in %s: %s", self.path, exc)


def _rewrite_history(
    config: dict[str, Any],
    *,
    base_layers: int,
    base_history: int,
    owners: list[LayerOwner],
) -> dict[str, Any]:
    """Name the extension that added each new layer, as the lifecycle does.

    The base's `base_history` entries stay as they are; of the extensions'
    entries, one per layer is kept, reading `Layer: '<created by>', Created by
    extension: <id>`.
    """
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    history = list(config.get("history") or [])
    if sum(not h.get("empty_layer") for h in history) != len(diff_ids):
        # The exporter indexes history by layer; one that does not line up with
        # the layers is useless to it, so start over with one entry per layer.
        history = [{} for _ in diff_ids]
        base_history = base_layers
    base = history[:base_history]
    index = sum(not h.get("empty_layer") for h in base)
    renamed: list[dict[str, Any]] = []
    for entry in history[base_history:]:
        if entry.get("empty_layer"):
            continue
        created_by = EXTENSION_LAYER_NAME.format(
            created_by=entry.get("created_by", ""), extension=_owner(owners, index)
        )
        renamed.append(
            {"created": entry["created"], "created_by": created_by}
            if "created" in entry
            else {"created_by": created_by}
        )
        index += 1
    return {**config, "history": base + renamed}


def _owner(owners: list[LayerOwner], index: int) -> str:
    for owner in owners:
        if index < owner.layers:
            return owner.extension
    return owners[-1].extension if owners else ""


def _layer_descriptors(
    collected: Collected, diff_ids: list[str]
) -> list[dict[str, Any]]:
    # The base's compressed digests are not the daemon's to tell; an
    # uncompressed descriptor is valid OCI, and the exporter never reads it.
    base = [
        {"mediaType": MEDIA_LAYER, "digest": diff_id, "size": size}
        for diff_id, size in zip(diff_ids, collected.base_sizes, strict=False)
    ]
    new = [
        {"mediaType": MEDIA_LAYER_GZIP, "digest": blob.digest, "size": blob.size}
        for blob in collected.new_blobs
    ]
    return base + new


def _write_layout(
    root: Path,
    config: dict[str, Any],
    layers: list[dict[str, Any]],
    annotations: dict[str, str],
    source: str,
) -> str:
    config_bytes = _canonical(config)
    config_digest = _put(root, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": layers,
        **({"annotations": annotations} if annotations else {}),
    }
    manifest_bytes = _canonical(manifest)
    manifest_digest = _put(root, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {SOURCE_ANNOTATION: source},
            }
        ],
    }
    (root / "index.json").write_bytes(_canonical(index))
    (root / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def _source_key(
    image: str,
    base_layers: int,
    base_history: int,
    owners: list[LayerOwner],
    base_name: str | None,
) -> str:
    """What the layout is made from; equal keys make equal layouts."""
    parts = [image, base_layers, base_history, base_name, [vars(o) for o in owners]]
    return sha256_digest(_canonical(parts))


def _existing_layout(parent: Path, source: str) -> Path | None:
    if not parent.is_dir():
        return None
    for path in parent.iterdir():
        if path.name.startswith("sha256:") and (
            _layout_digest(path, source) == path.name
        ):
            return path
    return None


def _layout_digest(path: Path, source: str) -> str | None:
    """The manifest digest of the layout at `path` if it was made from `source`."""
    try:
        index = json.loads((path / "index.json").read_bytes())
        descriptor = index["manifests"][0]
        annotations = descriptor.get("annotations") or {}
        digest = descriptor["digest"]
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if annotations.get(SOURCE_ANNOTATION) != source or not isinstance(digest, str):
        return None
    if not (path / "blobs" / "sha256" / digest.removeprefix("sha256:")).is_file():
        return None
    return digest


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgext"


def _copy_tree(source: Path, target: Path) -> None:
    # Hard links make the copy free; layout files are never written in place.
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


def _remember_layout(layout: Path, cached: Path) -> None:
    """Keep a copy of a new layout for the next layers directory; best effort."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".new-"))
        _copy_tree(layout, staging)
        try:
            os.rename(staging, cached)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        entries = sorted(
            (p for p in cached.parent.iterdir() if not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in entries[:-_CACHED_LAYOUTS]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        log.debug("not caching the layout: %s", exc, extra={"phase": "extend run"})


def _make_readable(root: Path) -> None:
    # mkdtemp and mkstemp make private files; the layout is an ordinary output.
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _put(root: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


def _remove_older_layouts(parent: Path, *, keep: Path) -> None:
    # The exporter reads the one layout under <extended>/run; a layout left by
    # an earlier extend of the same layers directory would be taken instead.
    for path in parent.iterdir():
        if path != keep and path.is_dir() and path.name.startswith("sha256:"):
            shutil.rmtree(path, ignore_errors=True)


def _canonical(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _json_object(data: bytes | None) -> dict[str, Any]:
    value = json.loads(data or b"{}")
    if not isinstance(value, dict):
        raise DaemonError("the daemon saved an image config that is not an object")
    return value


def _history_length(daemon: Daemon, image: str) -> int:
    try:
        api: Any = daemon.client
        return len(api.history(image))
    except (docker.errors.APIError, requests.RequestException) as exc:
        raise DaemonError(f"cannot read the history of {image}: {exc}") from None


def _diff_ids(info: dict[str, Any]) -> list[str]:
    return list((info.get("RootFS") or {}).get("Layers") or [])
