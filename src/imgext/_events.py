"""Events the phases emit while they work, for progress displays and `--json`.

Listeners are called from worker threads (build and run are extended in
parallel), so a listener must be thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepStarted:
    """The daemon starts applying one Dockerfile."""

    kind: str
    index: int
    total: int
    extension: str
    dockerfile: str


@dataclass(frozen=True)
class StepOutput:
    """A line of the classic builder's stream, or of a pull or push."""

    kind: str
    extension: str
    text: str


@dataclass(frozen=True)
class BuildkitTrace:
    """One `moby.buildkit.trace` event: a protobuf StatusResponse."""

    kind: str
    extension: str
    data: bytes


@dataclass(frozen=True)
class StepFinished:
    """The daemon applied one Dockerfile (or failed to: `image` is None)."""

    kind: str
    index: int
    extension: str
    image: str | None
    seconds: float


Event = StepStarted | StepOutput | BuildkitTrace | StepFinished
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener used when nobody listens."""
