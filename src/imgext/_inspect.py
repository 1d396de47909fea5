"""Show what an extended run image holds: from its sparse layout, or the daemon."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._daemon import Daemon
from ._dockerfile import REBASABLE_LABEL
from ._errors import ImageMissingError, UsageError
from ._export import BASE_NAME_ANNOTATION

_EXTENSION_LAYER = re.compile(
    r"^Layer: '(?P<created_by>.*)', Created by extension: (?P<extension>.*)$",
    re.DOTALL,
)


@dataclass
class LayerInfo:
    """One layer an extension added."""

    diff_id: str
    digest: str | None
    size: int | None
    extension: str | None
    created_by: str


@dataclass
class ImageInfo:
    """What `imgext inspect` shows."""

    source: str
    base: str | None
    top_layer: str | None
    user: str
    rebasable: bool
    base_layers: int
    layers: list[LayerInfo] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def to_text(self) -> str:
        lines = [
            f"image       {self.source}",
            f"base        {self.base or 'unknown'} ({self.base_layers} layer(s))",
            f"top layer   {self.top_layer or 'unknown'}",
            f"user        {self.user or 'root'}",
            f"rebasable   {str(self.rebasable).lower()}",
            f"extension layers: {len(self.layers)}",
        ]
        for layer in self.layers:
            size = _size(layer.size) if layer.size is not None else "?"
            lines.append(
                f"  {layer.extension or '?':<24} {size:>9}  {layer.diff_id[:19]}  "
                f"{_short(layer.created_by)}"
            )
        return "\n".join(lines) + "\n"


def inspect(target: str, *, base: str | None = None) -> ImageInfo:
    """Read a layout directory (or an extended dir holding one), else an image."""
    path = Path(target)
    if path.is_dir():
        return inspect_layout(_find_layout(path))
    return inspect_image(Daemon.connect(), target, base=base)


def inspect_layout(root: Path) -> ImageInfo:
    """The layers whose blobs the layout holds are the extensions'."""
    manifest = _manifest(root)
    config = _read_json(root, manifest["config"]["digest"])
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    descriptors = list(manifest.get("layers") or [])
    if len(descriptors) != len(diff_ids):
        raise UsageError(f"{root}: the manifest and config disagree on the layers")
    present = [_blob(root, d["digest"]).is_file() for d in descriptors]
    base_layers = present.index(True) if True in present else len(present)
    history = _layer_history(config, len(diff_ids))
    layers = []
    for index in range(base_layers, len(diff_ids)):
        created_by, extension = _parse_created_by(history[index])
        layers.append(
            LayerInfo(
                diff_id=diff_ids[index],
                digest=descriptors[index]["digest"],
                size=descriptors[index].get("size"),
                extension=extension,
                created_by=created_by,
            )
        )
    run_config = config.get("config") or {}
    return ImageInfo(
        source=str(root),
        base=(manifest.get("annotations") or {}).get(BASE_NAME_ANNOTATION),
        top_layer=diff_ids[base_layers - 1] if base_layers else None,
        user=str(run_config.get("User") or ""),
        rebasable=(run_config.get("Labels") or {}).get(REBASABLE_LABEL) == "true",
        base_layers=base_layers,
        layers=layers,
    )


def inspect_image(daemon: Daemon, ref: str, *, base: str | None = None) -> ImageInfo:
    """An image in the daemon; without `base` every layer is listed."""
    info = daemon.inspect_image(ref)
    if info is None:
        raise ImageMissingError(f"{ref} is neither a directory nor an image")
    diff_ids = list((info.get("RootFS") or {}).get("Layers") or [])
    base_layers = 0
    if base is not None:
        base_info = daemon.inspect_image(base)
        if base_info is None:
            raise ImageMissingError(f"base image {base} is not in the daemon")
        base_layers = len((base_info.get("RootFS") or {}).get("Layers") or [])
    api: Any = daemon.client
    # The history API lists entries newest first; layers are the non-empty ones.
    entries = [h for h in reversed(api.history(info["Id"])) if h.get("Size", 0) or 0]
    layered = _align(entries, diff_ids)
    layers = []
    for index in range(base_layers, len(diff_ids)):
        entry = layered[index]
        created_by, extension = _parse_created_by(
            {"created_by": entry.get("CreatedBy", "")}
        )
        layers.append(
            LayerInfo(diff_ids[index], None, entry.get("Size"), extension, created_by)
        )
    run_config = info.get("Config") or {}
    return ImageInfo(
        source=ref,
        base=base,
        top_layer=diff_ids[base_layers - 1] if base_layers else None,
        user=str(run_config.get("User") or ""),
        rebasable=(run_config.get("Labels") or {}).get(REBASABLE_LABEL) == "true",
        base_layers=base_layers,
        layers=layers,
    )


def _align(entries: list[dict[str, Any]], diff_ids: list[str]) -> list[dict[str, Any]]:
    # TODO: the history API reports a layer's file size, and a layer with no
    # files as size 0, so this pairing is a best effort; the layout is exact.
    padded: list[dict[str, Any]] = [{} for _ in range(len(diff_ids) - len(entries))]
    padded += entries
    return padded[-len(diff_ids) :] if diff_ids else []


def _find_layout(path: Path) -> Path:
    if (path / "index.json").is_file():
        return path
    for parent in (path / "run", path):
        layouts = sorted(p for p in parent.glob("sha256:*") if p.is_dir())
        if len(layouts) == 1:
            return layouts[0]
        if layouts:
            raise UsageError(f"{parent} holds several layouts; name one of them")
    raise UsageError(f"{path} holds no OCI image layout (no index.json)")


def _manifest(root: Path) -> dict[str, Any]:
    index = json.loads((root / "index.json").read_text())
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise UsageError(f"{root}: expected one manifest, found {len(manifests)}")
    return _read_json(root, manifests[0]["digest"])


def _read_json(root: Path, digest: str) -> dict[str, Any]:
    try:
        value = json.loads(_blob(root, digest).read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{root}: cannot read blob {digest}: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{root}: blob {digest} is not a JSON object")
    return value


def _blob(root: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return root / "blobs" / algorithm / hex_digest


def _layer_history(config: dict[str, Any], layers: int) -> list[dict[str, Any]]:
    entries = [h for h in config.get("history") or [] if not h.get("empty_layer")]
    return (entries + [{} for _ in range(layers)])[:layers]


def _parse_created_by(entry: dict[str, Any]) -> tuple[str, str | None]:
    text = str(entry.get("created_by") or "")
    match = _EXTENSION_LAYER.match(text)
    if match is None:
        return text, None
    return match["created_by"], match["extension"]


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
