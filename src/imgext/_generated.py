"""Read what the detect and generate phases left behind: the extension group,
`analyzed.toml`, and each extension's Dockerfiles, args and build context."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._dockerfile import Dockerfile, Kind, read
from ._errors import ExtensionOutputError, UsageError

RESERVED_ARGS = frozenset({"build_id", "user_id", "group_id"})
NEW_LAYOUT_API = (0, 13)
OLDEST_API = (0, 10)


@dataclass(frozen=True)
class GroupExtension:
    """One `[[group-extensions]]` entry of `group.toml`."""

    id: str
    version: str
    api: str

    @property
    def dir_name(self) -> str:
        return self.id.replace("/", "_")


@dataclass(frozen=True)
class Analyzed:
    """The parts of `analyzed.toml` the extend phase reads."""

    build_image: str | None
    run_image: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class ExtensionDockerfile:
    """A Dockerfile to apply, with everything needed to apply it."""

    extension: str
    dockerfile: Dockerfile
    context: Path
    args: tuple[tuple[str, str], ...]

    @property
    def kind(self) -> Kind:
        return self.dockerfile.kind

    @property
    def path(self) -> Path:
        return self.dockerfile.path


def parse_platform_api(text: str) -> tuple[int, int]:
    try:
        major, minor = (int(part) for part in text.split("."))
    except ValueError:
        raise UsageError(f"platform API {text!r} is not of the form X.Y") from None
    if (major, minor) < OLDEST_API:
        raise UsageError(
            f"platform API {text} is not supported: image extensions need 0.10 or later"
        )
    return major, minor


def load_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None


def read_group(path: Path) -> list[GroupExtension]:
    data = load_toml(path, "group file")
    entries = data.get("group-extensions", [])
    if not isinstance(entries, list):
        raise UsageError(f"{path}: [[group-extensions]] must be an array of tables")
    group = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise UsageError(f"{path}: group extension #{number} has no id")
        group.append(
            GroupExtension(
                id=entry["id"],
                version=str(entry.get("version", "")),
                api=str(entry.get("api", "")),
            )
        )
    return group


def read_analyzed(path: Path) -> Analyzed:
    data = load_toml(path, "analyzed file")
    build = data.get("build-image", {})
    run = data.get("run-image", {})
    if not isinstance(build, dict) or not isinstance(run, dict):
        raise UsageError(f"{path}: [build-image] and [run-image] must be tables")
    return Analyzed(
        build_image=build.get("reference") or None,
        run_image=run.get("reference") or run.get("image") or None,
        data=data,
    )


def dockerfiles(
    group: list[GroupExtension],
    generated: Path,
    kind: Kind,
    *,
    app: Path,
    platform_api: tuple[int, int],
) -> list[ExtensionDockerfile]:
    """Every Dockerfile of `kind` to apply, in group order.

    Superseded run Dockerfiles (renamed `.ignore` by the generate phase) are not
    listed. For run, Dockerfiles before the last one that switches the run image
    are dropped too, as the generate phase would have renamed them.
    """
    found = []
    for extension in group:
        if platform_api >= NEW_LAYOUT_API:
            folder = generated / extension.dir_name
            path = folder / f"{kind}.Dockerfile"
            config_path = folder / "extend-config.toml"
            context = _context(folder, kind, app, extension.id)
        else:
            folder = generated / str(kind) / extension.dir_name
            path = folder / "Dockerfile"
            config_path = folder / "extend-config.toml"
            context = app
        if not path.is_file():
            continue
        parsed = read(path, kind=kind, extension=extension.id)
        args = read_args(config_path, kind, extension.id)
        found.append(ExtensionDockerfile(extension.id, parsed, context, args))
    if kind is Kind.RUN:
        switches = [i for i, d in enumerate(found) if d.dockerfile.switches]
        if switches:
            found = found[switches[-1] :]
    return found


def read_args(path: Path, kind: Kind, extension: str) -> tuple[tuple[str, str], ...]:
    """The `[[<kind>.args]]` of an `extend-config.toml`, checked."""
    if not path.is_file():
        return ()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ExtensionOutputError(
            f"cannot read extend config: {exc}", extension=extension, path=str(path)
        ) from None
    section = data.get(str(kind), {})
    entries = section.get("args", []) if isinstance(section, dict) else None
    if not isinstance(entries, list):
        raise ExtensionOutputError(
            f"[[{kind}.args]] must be an array of tables",
            extension=extension,
            path=str(path),
        )
    args = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        value = entry.get("value", "") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ExtensionOutputError(
                f"each [[{kind}.args]] needs a string name and a string value",
                extension=extension,
                path=str(path),
            )
        if name in RESERVED_ARGS:
            raise ExtensionOutputError(
                f"build arg {name!r} is reserved for the platform "
                f"({', '.join(sorted(RESERVED_ARGS))})",
                extension=extension,
                path=str(path),
            )
        args.append((name, value))
    return tuple(args)


def _context(folder: Path, kind: Kind, app: Path, extension: str) -> Path:
    shared = folder / "context"
    specific = folder / f"context.{kind}"
    if shared.is_dir() and (
        specific.is_dir() or (folder / f"context.{_other(kind)}").is_dir()
    ):
        raise ExtensionOutputError(
            "context/ cannot be used together with context.build/ or context.run/",
            extension=extension,
            path=str(folder),
        )
    if specific.is_dir():
        return specific
    if shared.is_dir():
        return shared
    return app


def _other(kind: Kind) -> Kind:
    return Kind.RUN if kind is Kind.BUILD else Kind.BUILD
