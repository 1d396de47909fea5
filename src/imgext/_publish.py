"""Publish extended images: push them to a registry through the daemon.

The daemon does the transfer, so only the blobs the registry lacks are
uploaded, and the credentials are the user's Docker config (docker-py loads it
and sends it to the daemon per request; imgext never logs or reports it).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import requests
from docker.utils import parse_repository_tag

from ._daemon import Daemon
from ._errors import DaemonError, ImageMissingError, RegistryError, UsageError
from ._report import Report

log = logging.getLogger("imgext")

# `user:password@` in a URL the daemon echoes back must never reach a log.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


@dataclass
class Pushed:
    """One reference pushed: the manifest digest, and what each layer needed."""

    ref: str
    digest: str
    size: int | None = None
    layers: Counter[str] = field(default_factory=Counter)

    @property
    def uploaded(self) -> int:
        return self.layers["Pushed"]


def push(
    daemon: Daemon,
    image: str,
    ref: str,
    *,
    on_line: Callable[[str], None] | None = None,
    log_level: int = logging.INFO,
) -> Pushed:
    """Push `image` (an ID or a name in the daemon) as `ref`; return its digest.

    A tag made only for the push is removed after it, whether the push worked
    or not, and a tag `ref` that named another image is put back.
    """
    repository, tag = _split(ref)
    target = f"{repository}:{tag}"
    source = daemon.inspect_image(image)
    if source is None:
        raise ImageMissingError(f"cannot publish {image}: it is not in the daemon")
    before = daemon.inspect_image(target)
    retag = before is None or before["Id"] != source["Id"]
    if retag:
        daemon.tag(source["Id"], target)
    try:
        pushed = _push(daemon, repository, tag, target, on_line)
    finally:
        if retag and before is not None:
            daemon.tag(before["Id"], target)
        elif retag:
            daemon.remove_tag(target)
    log.log(
        log_level,
        "pushed %s@%s (%d layer(s) uploaded, %d already there)",
        target,
        pushed.digest,
        pushed.uploaded,
        sum(pushed.layers.values()) - pushed.uploaded,
        extra={"phase": "publish"},
    )
    return pushed


def _split(ref: str) -> tuple[str, str]:
    if "@" in ref:
        raise UsageError(f"cannot publish to {ref}: give a tag, not a digest")
    repository, tag = parse_repository_tag(ref)
    if not repository:
        raise UsageError(f"cannot publish to {ref!r}: not an image reference")
    return repository, tag or "latest"


def _push(
    daemon: Daemon,
    repository: str,
    tag: str,
    target: str,
    on_line: Callable[[str], None] | None,
) -> Pushed:
    api: Any = daemon.client
    try:
        events: Iterator[dict[str, Any]] = api.push(
            repository, tag=tag, stream=True, decode=True
        )
        return _read_push_stream(events, target, on_line)
    except docker.errors.APIError as exc:
        raise RegistryError(
            f"the daemon refused to push {target}: {_scrub(str(exc.explanation))}"
        ) from None
    except requests.ConnectionError as exc:
        raise DaemonError(
            f"lost the Docker daemon while pushing {target}: {exc}"
        ) from None
    except (requests.RequestException, ValueError) as exc:
        raise RegistryError(
            f"the push of {target} broke off: {_scrub(str(exc))}"
        ) from None


def _read_push_stream(
    events: Iterator[dict[str, Any]],
    target: str,
    on_line: Callable[[str], None] | None,
) -> Pushed:
    """Follow the daemon's push events; errors arrive inside the stream."""
    statuses: dict[str, str] = {}
    digest: str | None = None
    size: int | None = None
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = event.get("error") or detail.get("message") or "push failed"
            raise RegistryError(
                f"the registry did not take {target}: {_scrub(str(message).strip())}",
                hint="check that the registry is up, and `docker login` to it",
            )
        status = event.get("status")
        layer = event.get("id")
        if isinstance(status, str) and isinstance(layer, str) and _final(status):
            statuses[layer] = _kind(status)
        if on_line and isinstance(status, str):
            on_line(_scrub(f"{layer or ''} {status}".strip()))
        aux = event.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
            digest = aux["Digest"]
            size = aux.get("Size") if isinstance(aux.get("Size"), int) else None
    if digest is None:
        raise RegistryError(
            f"the daemon finished the push of {target} without a digest"
        )
    return Pushed(target, digest, size, Counter(statuses.values()))


def _final(status: str) -> bool:
    return status in ("Pushed", "Layer already exists") or status.startswith(
        "Mounted from"
    )


def _kind(status: str) -> str:
    return "Mounted" if status.startswith("Mounted from") else status


def _scrub(text: str) -> str:
    return _URL_CREDENTIALS.sub("***@", text)


def publish(
    daemon: Daemon,
    images: dict[str, tuple[str | None, list[str]]],
    *,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, list[Pushed]]:
    """Push each kind's image to its refs; the image defaults to the first ref."""
    results: dict[str, list[Pushed]] = {}
    for kind, (image, refs) in images.items():
        if not refs:
            continue
        source = image or refs[0]
        results[kind] = [push(daemon, source, ref, on_line=on_line) for ref in refs]
    return results


def publish_report(
    daemon: Daemon, report: Report, *, on_line: Callable[[str], None] | None = None
) -> None:
    """Push the images an extend run tagged, and record their digests in it."""
    for image in (report.build, report.run):
        if image is not None:
            image.digest = push(daemon, image.image, image.tag, on_line=on_line).digest


def to_json(results: dict[str, list[Pushed]]) -> str:
    data = {
        kind: [
            {"ref": p.ref, "digest": p.digest, "size": p.size, "uploaded": p.uploaded}
            for p in pushed
        ]
        for kind, pushed in results.items()
    }
    return json.dumps(data, indent=2) + "\n"
