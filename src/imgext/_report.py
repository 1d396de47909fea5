"""What an extend or detect run did, as written by `--report`."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepReport:
    """One Dockerfile applied by the daemon."""

    extension: str
    dockerfile: str
    image: str
    seconds: float


@dataclass
class ImageReport:
    """One extended image (build or run)."""

    base: str
    base_id: str
    image: str
    tag: str
    user: str
    steps: list[StepReport] = field(default_factory=list)
    rebasable: bool | None = None
    top_layer: str | None = None
    extended: str | None = None
    digest: str | None = None

    def to_dict(self, kind: str) -> dict[str, Any]:
        data = asdict(self)
        if kind == "build":
            for key in ("rebasable", "top_layer", "extended"):
                data.pop(key)
        return data


@dataclass
class Report:
    """The whole run: each kind is None when it had nothing to apply."""

    build: ImageReport | None = None
    run: ImageReport | None = None
    builder: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "build": self.build.to_dict("build") if self.build else None,
            "run": self.run.to_dict("run") if self.run else None,
            "builder": self.builder,
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


@dataclass
class MemberReport:
    """A buildpack or extension of the detected group; `dockerfiles` lists the
    kinds an extension generated, `run_ignored` that a later run image switch
    makes its run Dockerfile moot."""

    id: str
    version: str
    detect_seconds: float | None = None
    generate_seconds: float | None = None
    dockerfiles: list[str] = field(default_factory=list)
    run_ignored: bool = False


@dataclass
class DetectReport:
    """What detect and generate decided and where they wrote it."""

    layers: str
    buildpacks: list[MemberReport] = field(default_factory=list)
    extensions: list[MemberReport] = field(default_factory=list)
    run_image: str | None = None
    extend_run: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        for member in (*data["buildpacks"], *data["extensions"]):
            for key in ("detect_seconds", "generate_seconds"):
                if member[key] is not None:
                    member[key] = round(member[key], 3)
        for member in data["buildpacks"]:
            for key in ("generate_seconds", "dockerfiles", "run_ignored"):
                del member[key]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
