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


@dataclass(frozen=True)
class RunStarted:
    """A buildpack's or extension's `bin/detect` or `bin/generate` starts."""

    phase: str  # detect or generate
    role: str  # buildpack or extension
    id: str
    version: str


@dataclass(frozen=True)
class RunEnded:
    """The executable exited; its output comes with `RunFinished`, once the
    whole batch is back."""

    phase: str
    role: str
    id: str
    version: str
    code: int
    seconds: float


@dataclass(frozen=True)
class RunFinished:
    """What a run came to: for detect pass, fail, skip or error; for generate
    done or error. `seconds` is None when nothing ran (a static plan or output).
    """

    phase: str
    role: str
    id: str
    version: str
    verdict: str
    seconds: float | None
    output: tuple[str, ...] = ()
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == "error"


Event = (
    StepStarted
    | StepOutput
    | BuildkitTrace
    | StepFinished
    | RunStarted
    | RunEnded
    | RunFinished
)
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener used when nobody listens."""
