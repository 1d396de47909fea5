"""Replay the daemon streams recorded in tests/data/streams/ as imgext events."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgext._events import BuildkitTrace, Event, StepFinished, StepOutput, StepStarted

STREAMS = Path(__file__).parent / "data" / "streams"
NAMES = [
    f"{builder}-{case}"
    for builder in ("buildkit", "classic")
    for case in ("ok", "cached", "failing")
]


def raw(name: str) -> list[dict[str, Any]]:
    lines = (STREAMS / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def traces(name: str) -> list[bytes]:
    """The base64-decoded payloads of the stream's `moby.buildkit.trace` events."""
    return [
        base64.b64decode(event["aux"])
        for event in raw(name)
        if event.get("id") == "moby.buildkit.trace"
    ]


def events(
    name: str, *, kind: str = "run", extension: str = "demo/hello"
) -> Iterator[Event]:
    """The events imgext's extend phase emits for one recorded build."""
    yield StepStarted(kind, 1, 1, extension, f"generated/{name}/run.Dockerfile")
    for event in raw(name):
        if event.get("id") == "moby.buildkit.trace":
            yield BuildkitTrace(kind, extension, base64.b64decode(event["aux"]))
        elif isinstance(event.get("stream"), str):
            # As imgext's daemon module splits the classic builder's stream.
            for line in event["stream"].splitlines():
                yield StepOutput(kind, extension, line)
    if not name.endswith("failing"):
        yield StepFinished(kind, 1, extension, "sha256:" + "ab" * 32, 1.5)
