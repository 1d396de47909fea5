"""What the user sees while imgext works: live, plain, JSON or quiet displays.

Every display is a `Listener` of the phases' events. The events are folded by
a `Tracker` into lanes (one per image kind and extension: one Dockerfile; or
one buildpack's or extension's bin/detect or bin/generate) and their
instructions (each Dockerfile step as the daemon runs it); the displays only
differ in how they show the changes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from . import _trace
from ._errors import ExitCode, ImgextError, Interrupted, StepFailedError
from ._events import (
    BuildkitTrace,
    Event,
    RunEnded,
    RunFinished,
    RunStarted,
    StepFinished,
    StepOutput,
    StepStarted,
)
from ._report import DetectReport, MemberReport, Report

# BuildKit names a Dockerfile step `[2/4] RUN ...`; its other vertexes
# (`[internal] load ...`, `exporting to image`) are plumbing.
_BUILDKIT_STEP = re.compile(r"^\[(?P<position>\d+/\d+)\] (?P<text>.*)$", re.DOTALL)
# imgext chains Dockerfiles through temporary tags; show FROM as written.
_TEMP_FROM = re.compile(r"^FROM (?:docker\.io/)?imgext-tmp/\S+$")
_CLASSIC_STEP = re.compile(r"^Step (?P<position>\d+/\d+) : (?P<text>.*)$", re.DOTALL)
_CLASSIC_IMAGE = re.compile(r"^ ---> [0-9a-f]{12,64}$")
_CLASSIC_NOISE = re.compile(
    r"^( ---> Running in [0-9a-f]+| ---> Using cache|Removing intermediate container"
    r" [0-9a-f]+|Successfully built [0-9a-f]+|Successfully tagged .*)$"
)
# CSI and OSC sequences (the classic builder colours stderr), then any other
# control character but tab.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
OUTPUT_TAIL = 20


def clean(text: str) -> str:
    """`text` without terminal escapes or control characters (tabs stay)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


@dataclass
class Instruction:
    """One Dockerfile step as the daemon runs it."""

    key: str
    position: str
    text: str
    cached: bool = False
    started: float | None = None
    seconds: float | None = None
    error: str = ""
    done: bool = False
    cancelled: bool = False
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def title(self) -> str:
        return f"[{self.position}] {self.text}" if self.position else self.text


@dataclass
class Lane:
    """One extension's work on one image kind; or, when `role` is set (a
    buildpack or extension), its bin/detect or bin/generate, `kind` naming the
    phase."""

    kind: str
    extension: str
    index: int = 0
    total: int = 0
    dockerfile: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None
    image: str | None = None
    state: str = "running"  # running, done, failed, cancelled
    instructions: dict[str, Instruction] = field(default_factory=dict)
    trace: _trace.Trace = field(default_factory=_trace.Trace)
    emitted: dict[str, int] = field(default_factory=dict)
    current: Instruction | None = None
    role: str = ""
    version: str = ""
    verdict: str = ""
    code: int | None = None
    error: str = ""
    output: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The extension (or buildpack) as the user reads it."""
        return f"{self.extension}@{self.version}" if self.version else self.extension

    @property
    def running(self) -> Instruction | None:
        # BuildKit announces steps before it starts them: skip those.
        return next(
            (
                i
                for i in self.instructions.values()
                if i.started is not None and not i.done
            ),
            None,
        )


@dataclass(frozen=True)
class Change:
    """Something a display may show; `what` names it as `--json` does:
    step-started, instruction-started, output, instruction-finished, warning,
    step-finished."""

    what: str
    lane: Lane
    instruction: Instruction | None = None
    text: str = ""


class Tracker:
    """Folds events into lanes; not thread-safe, the displays lock around it."""

    def __init__(self) -> None:
        self.lanes: dict[tuple[str, str], Lane] = {}
        self.order: list[Lane] = []

    def handle(self, event: Event) -> list[Change]:
        if isinstance(event, RunStarted | RunEnded | RunFinished):
            return self._run(event)
        if isinstance(event, StepStarted):
            lane = Lane(
                event.kind,
                event.extension,
                event.index,
                event.total,
                event.dockerfile,
            )
            self.lanes[event.kind, event.extension] = lane
            self.order.append(lane)
            return [Change("step-started", lane)]
        lane = self._lane(event.kind, event.extension)
        if isinstance(event, BuildkitTrace):
            return self._buildkit(lane, event.data)
        if isinstance(event, StepOutput):
            return [
                c for line in event.text.splitlines() for c in self._line(lane, line)
            ]
        assert isinstance(event, StepFinished)
        changes = self._close_all(lane)
        lane.seconds = event.seconds
        lane.image = event.image
        lane.state = "done" if event.image else "failed"
        return [*changes, Change("step-finished", lane)]

    def _run(self, event: RunStarted | RunEnded | RunFinished) -> list[Change]:
        key = (event.phase, f"{event.role} {event.id}@{event.version}")
        lane = self.lanes.get(key)
        if lane is None or isinstance(event, RunStarted):
            lane = Lane(event.phase, event.id, role=event.role, version=event.version)
            self.lanes[key] = lane
            self.order.append(lane)
        if isinstance(event, RunStarted):
            return [Change("run-started", lane)]
        if isinstance(event, RunEnded):
            # Stopped, but its output is not back yet.
            lane.state = "ended"
            lane.code = event.code
            lane.seconds = event.seconds
            return [Change("run-ended", lane)]
        lane.verdict = event.verdict
        lane.error = event.error
        lane.output = list(event.output)
        lane.state = "failed" if event.failed else "done"
        if event.seconds is not None:
            lane.seconds = event.seconds
        # What generate prints is for the user, as in the lifecycle; what
        # detect prints only when it went wrong.
        shown = lane.output if event.phase == "generate" or event.failed else []
        changes = [Change("output", lane, None, clean(line)) for line in shown]
        return [*changes, Change("run-finished", lane)]

    def fail(self, error: ImgextError) -> list[Change]:
        """Mark what was running when `error` ended the run."""
        changes: list[Change] = []
        culprit = self._culprit(error)
        for lane in self.order:
            if lane.state not in ("running", "ended"):
                continue
            if lane.state == "running" or lane.seconds is None:
                lane.seconds = time.monotonic() - lane.started
            lane.state = "failed" if lane is culprit else "cancelled"
            step = lane.running
            if step is not None:
                if lane is culprit:
                    step.error = step.error or error.message.splitlines()[0]
                else:
                    step.cancelled = True
                step.done = True
                if step.started is not None and step.seconds is None:
                    step.seconds = time.monotonic() - step.started
                changes.append(Change("instruction-finished", lane, step))
            what = "run-finished" if lane.role else "step-finished"
            changes.append(Change(what, lane))
        return changes

    def failed_output(self) -> list[str]:
        """The output of the step, else the bin/generate, that failed, as this
        tracker saw it."""
        for lane in self.order:
            for step in lane.instructions.values():
                if step.error:
                    return list(step.output)
        for lane in reversed(self.order):
            if lane.kind == "generate" and lane.state == "failed":
                return [clean(line) for line in lane.output]
        return []

    def _culprit(self, error: ImgextError) -> Lane | None:
        if isinstance(error, Interrupted):
            return None
        running = [lane for lane in self.order if lane.state in ("running", "ended")]
        extension = getattr(error, "extension", None)
        path = getattr(error, "path", None)
        for lane in running:
            if lane.extension == extension and (not path or lane.dockerfile == path):
                return lane
        failed = [
            lane for lane in running if any(i.error for i in lane.instructions.values())
        ]
        return next(iter(failed or running), None)

    def _lane(self, kind: str, extension: str) -> Lane:
        lane = self.lanes.get((kind, extension))
        if lane is None:
            # Output may come without a StepStarted (a pull, or a phase that
            # reports no steps); it still gets a lane of its own.
            lane = self.lanes[kind, extension] = Lane(kind, extension)
            self.order.append(lane)
        return lane

    def _buildkit(self, lane: Lane, data: bytes) -> list[Change]:
        try:
            status = _trace.decode(data)
        except _trace.TraceError:
            return []
        changes: list[Change] = []
        for vertex in lane.trace.add(status):
            match = _BUILDKIT_STEP.match(vertex.name)
            if match is None and not vertex.error:
                continue
            step = lane.instructions.get(vertex.digest)
            if step is None:
                position, text = match.groups() if match else ("", vertex.name)
                text = _TEMP_FROM.sub("FROM ${base_image}", text)
                step = Instruction(vertex.digest, position, text)
                lane.instructions[vertex.digest] = step
            if step.started is None and (vertex.started or vertex.completed):
                step.started = time.monotonic()
                changes.append(Change("instruction-started", lane, step))
            changes.extend(self._buildkit_output(lane, step, vertex))
            if vertex.completed is not None and not step.done:
                changes.extend(self._buildkit_output(lane, step, vertex, final=True))
                step.cached = vertex.cached
                step.seconds = vertex.seconds
                step.error = vertex.error
                step.done = True
                changes.append(Change("instruction-finished", lane, step))
        for warning in status.warnings:
            changes.append(Change("warning", lane, None, clean(warning.short)))
        return changes

    def _buildkit_output(
        self,
        lane: Lane,
        step: Instruction,
        vertex: _trace.VertexState,
        *,
        final: bool = False,
    ) -> list[Change]:
        # Logs arrive in chunks that may split a line: show whole lines only,
        # and the rest once the step is complete.
        start = lane.emitted.get(vertex.digest, 0)
        end = len(vertex.output) if final else vertex.output.rfind(b"\n") + 1
        if end <= start:
            return []
        lane.emitted[vertex.digest] = end
        text = bytes(vertex.output[start:end]).decode("utf-8", "replace")
        changes = []
        for line in clean(text).splitlines():
            step.output.append(line)
            changes.append(Change("output", lane, step, line))
        return changes

    def _line(self, lane: Lane, line: str) -> list[Change]:
        match = _CLASSIC_STEP.match(line)
        if match:
            changes = self._close_all(lane)
            position, text = match.groups()
            step = Instruction(
                f"classic:{len(lane.instructions)}",
                position,
                text,
                started=time.monotonic(),
            )
            lane.instructions[step.key] = step
            lane.current = step
            return [*changes, Change("instruction-started", lane, step)]
        current = lane.current
        if line == " ---> Using cache" and current is not None:
            current.cached = True
            return []
        if _CLASSIC_IMAGE.match(line) and current is not None:
            return self._close(lane, current)
        text = clean(line)
        if _CLASSIC_NOISE.match(text) or not text.strip():
            return []
        if text.startswith("[Warning] "):
            return [Change("warning", lane, None, text.removeprefix("[Warning] "))]
        if current is None or current.done:
            return [Change("output", lane, None, text)]
        current.output.append(text)
        return [Change("output", lane, current, text)]

    def _close(self, lane: Lane, step: Instruction) -> list[Change]:
        if step.done:
            return []
        step.done = True
        if step.started is not None:
            step.seconds = time.monotonic() - step.started
        return [Change("instruction-finished", lane, step)]

    def _close_all(self, lane: Lane) -> list[Change]:
        return [
            c for s in list(lane.instructions.values()) for c in self._close(lane, s)
        ]


@dataclass(frozen=True)
class ImageStats:
    """Layers the extension added on top of the base image, and their size."""

    layers: int
    size: int | None


class _Inspector(Protocol):
    def inspect_image(self, ref: str) -> dict[str, Any] | None: ...


def image_stats(daemon: _Inspector, report: Report) -> dict[str, ImageStats]:
    """Per kind, what the extended image adds to its base."""
    stats = {}
    for kind, image in (("build", report.build), ("run", report.run)):
        if image is None:
            continue
        base = daemon.inspect_image(image.base_id) or {}
        result = daemon.inspect_image(image.image) or {}
        below = (base.get("RootFS") or {}).get("Layers") or []
        above = (result.get("RootFS") or {}).get("Layers") or []
        shared = 0
        while shared < min(len(below), len(above)) and below[shared] == above[shared]:
            shared += 1
        size = None
        if isinstance(base.get("Size"), int) and isinstance(result.get("Size"), int):
            size = max(0, result["Size"] - base["Size"])
        stats[kind] = ImageStats(len(above) - shared, size)
    return stats


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _seconds(value: float | None) -> str:
    # Most bin/detect runs take a few hundredths of a second.
    if value is None:
        return ""
    return f"{value:.2f}s" if value < 0.995 else f"{value:.1f}s"


def _instruction_result(step: Instruction) -> str:
    if step.error:
        return "ERROR"
    if step.cancelled:
        return "STOPPED"
    if step.cached:
        return "CACHED"
    return _seconds(step.seconds) or "done"


def _summary_rows(
    report: Report, stats: Mapping[str, ImageStats]
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for kind, image in (("build", report.build), ("run", report.run)):
        if image is None:
            rows.append((kind, "nothing to apply", "", "", "", "", "", ""))
            continue
        stat = stats.get(kind)
        rebasable = "" if image.rebasable is None else str(image.rebasable).lower()
        rows.append(
            (
                kind,
                image.base,
                image.image.removeprefix("sha256:")[:12],
                image.tag,
                image.user or "root",
                rebasable,
                f"{stat.layers}, {human_size(stat.size)}" if stat else "?",
                _seconds(sum(s.seconds for s in image.steps)),
            )
        )
    return rows


SUMMARY_HEADER = (
    "kind",
    "base",
    "result",
    "tag",
    "user",
    "rebasable",
    "layers",
    "time",
)


DETECTED_HEADER = ("", "id", "version", "Dockerfiles", "time")


def _dockerfiles(member: MemberReport) -> str:
    kinds = [
        f"{k} (ignored)" if k == "run" and member.run_ignored else k
        for k in member.dockerfiles
    ]
    return ", ".join(kinds) or "none"


def _detected_rows(report: DetectReport) -> list[tuple[str, ...]]:
    """The group, extensions first as they run first: what each generated and
    how long its bin/detect and bin/generate took."""
    rows: list[tuple[str, ...]] = []
    for role, members in (
        ("extension", report.extensions),
        ("buildpack", report.buildpacks),
    ):
        for member in members:
            times = [t for t in (member.detect_seconds, member.generate_seconds) if t]
            rows.append(
                (
                    role,
                    member.id,
                    member.version,
                    _dockerfiles(member) if role == "extension" else "",
                    _seconds(sum(times)) if times else "",
                )
            )
    return rows


def _run_image_line(report: DetectReport) -> str:
    extend = " (to be extended)" if report.extend_run else ""
    return f"run image: {report.run_image or 'none'}{extend}"


def _who(lane: Lane) -> str:
    """`extension curl@0.1` for a detect or generate lane, else the extension."""
    return f"{lane.role} {lane.name}" if lane.role else lane.extension


def _run_result(lane: Lane) -> str:
    word = lane.verdict or lane.state
    took = f" in {_seconds(lane.seconds)}" if lane.seconds is not None else ""
    return f"{word}{took}" + (f": {lane.error}" if lane.error else "")


# What to do next, for errors raised without a hint of their own.
_NEXT_STEP = {
    ExitCode.USAGE: "see `imgext <command> --help` and docs/guide.md",
    ExitCode.EXTENSION_FAILED: "run the extension's bin/generate by hand to see why",
    ExitCode.INVALID_EXTENSION_OUTPUT: "fix what the extension's bin/generate "
    "writes; docs/guide.md says what is allowed",
    ExitCode.STEP_FAILED: "fix the extension's Dockerfile, or the input that made it",
    ExitCode.DAEMON_UNREACHABLE: "run `imgext doctor` to check the daemon",
    ExitCode.IMAGE_MISSING: "run `imgext doctor --layers DIR` to check the base images",
    ExitCode.REGISTRY_FAILED: "`docker login HOST`; `imgext doctor --registry HOST`",
}


def next_step(error: ImgextError) -> str | None:
    """The error's own hint, else the usual next step for its kind of failure."""
    return error.hint or _NEXT_STEP.get(ExitCode(error.exit_code))


def _output_heading(error: ImgextError) -> str:
    if isinstance(error, StepFailedError):
        return "output of the failing step (last lines)"
    return "its output (last lines)"


def error_lines(error: ImgextError, output: list[str] | None = None) -> list[str]:
    """The error as the user reads it: message, the step's output, the hint.

    `output` replaces the error's own copy of the step's output; [] leaves it out.
    """
    lines = [
        f"error: {clean(line)}" if i == 0 else clean(line)
        for i, line in enumerate(error.message.splitlines())
    ]
    if output is None:
        # A failed step's output, or a failed bin/generate's.
        output = getattr(error, "output", None)
    if output:
        lines.append(f"  {_output_heading(error)}:")
        lines.extend(f"  | {clean(line)}" for line in output[-OUTPUT_TAIL:])
    hint = next_step(error)
    if hint:
        lines.append(f"  hint: {hint}")
    return lines


class Display:
    """Base of the displays: a thread-safe `Listener` with an end."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.tracker = Tracker()

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, event: Event) -> None:
        with self._lock:
            for change in self.tracker.handle(event):
                self.show(change)

    def show(self, change: Change) -> None:
        """Show one change; called with the lock held."""

    def log(self, record: logging.LogRecord) -> None:
        """Show a record of the `imgext` logger."""

    def summary(self, report: Report, stats: Mapping[str, ImageStats]) -> None:
        """Show what the run produced."""

    def detected(self, report: DetectReport, *, final: bool) -> None:
        """Show what detect and generate decided; `final` when nothing follows
        (`imgext detect`), not when extend comes next."""

    def error(self, error: ImgextError) -> None:
        """Show why the run failed; `error` ends it."""
        with self._lock:
            for change in self.tracker.fail(error):
                self.show(change)

    def close(self) -> None:
        """Stop drawing; idempotent."""


def _stamp(created: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


def _level(record: logging.LogRecord) -> str:
    return {"WARNING": "WARN"}.get(record.levelname, record.levelname)


class QuietDisplay(Display):
    """`--quiet`: only warnings and errors, on stderr."""

    def __init__(self, err: IO[str] | None = None) -> None:
        super().__init__()
        self._err = err or sys.stderr

    def log(self, record: logging.LogRecord) -> None:
        with self._lock:
            print(_plain_record(record), file=self._err, flush=True)

    def error(self, error: ImgextError) -> None:
        super().error(error)
        with self._lock:
            lines = error_lines(error, self.tracker.failed_output() or None)
            for index, line in enumerate(lines):
                prefix = "imgext: " if index == 0 else ""
                print(f"{prefix}{line}", file=self._err, flush=True)


def _plain_record(record: logging.LogRecord) -> str:
    phase = getattr(record, "phase", None)
    where = f"[{phase}] " if phase else ""
    return clean(
        f"{_stamp(record.created)} {_level(record):<5} {where}{record.getMessage()}"
    )


class PlainDisplay(QuietDisplay):
    """Timestamped lines, no control characters: for CI logs and pipes."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        super().__init__(err)
        self._out = out or sys.stdout
        self._headed: set[tuple[str, str, str]] = set()

    def show(self, change: Change) -> None:
        # One line for a step without output (`[1/4] FROM ...: CACHED`); a
        # header, its output and a short result line for one with output.
        lane = change.lane
        step = change.instruction
        lines = []
        if change.what == "step-started":
            lines.append(f"{lane.index}/{lane.total} {lane.dockerfile}")
        elif change.what == "run-started":
            lines.append(f"bin/{lane.kind}")
        elif change.what == "run-finished":
            lines.append(_run_result(lane))
        elif change.what == "output":
            if (
                step is not None
                and (lane.kind, lane.extension, step.key) not in self._headed
            ):
                self._headed.add((lane.kind, lane.extension, step.key))
                lines.append(step.title)
            lines.append(f"| {change.text}")
        elif change.what == "instruction-finished" and step is not None:
            result = _instruction_result(step)
            if (lane.kind, lane.extension, step.key) in self._headed:
                lines.append(f"[{step.position}] {result}" if step.position else result)
            else:
                lines.append(f"{step.title}: {result}")
        elif change.what == "warning":
            lines.append(f"warning: {change.text}")
        elif change.what == "step-finished":
            state = "done" if lane.state == "done" else lane.state.upper()
            lines.append(f"{state} in {_seconds(lane.seconds) or '?'}")
        for text in lines:
            line = clean(f"{_stamp()} {lane.kind:<5} {_who(lane)}  {text}")
            print(line.replace("\n", " "), file=self._out, flush=True)

    def summary(self, report: Report, stats: Mapping[str, ImageStats]) -> None:
        with self._lock:
            self._table([SUMMARY_HEADER, *_summary_rows(report, stats)])
            print(
                f"done in {report.seconds:.1f}s with the {report.builder or 'no'} "
                "builder",
                file=self._out,
                flush=True,
            )

    def detected(self, report: DetectReport, *, final: bool) -> None:
        if not final:
            return
        with self._lock:
            self._table([DETECTED_HEADER, *_detected_rows(report)])
            print(_run_image_line(report), file=self._out)
            print(f"done in {report.seconds:.2f}s", file=self._out, flush=True)

    def _table(self, rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print(clean("  ".join(cells).rstrip()), file=self._out)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class JsonDisplay(Display):
    """`--json`: one object per line per change, the report last."""

    def __init__(self, out: IO[str] | None = None) -> None:
        super().__init__()
        self._out = out or sys.stdout

    def _emit(self, what: str, **fields: Any) -> None:
        line = json.dumps({"time": _stamp(), "event": what, **fields})
        print(line, file=self._out, flush=True)

    def show(self, change: Change) -> None:
        lane = change.lane
        if lane.role:
            self._run(change)
            return
        fields: dict[str, Any] = {"kind": lane.kind, "extension": lane.extension}
        step = change.instruction
        if change.what in ("step-started", "step-finished"):
            fields.update(
                index=lane.index, total=lane.total, dockerfile=lane.dockerfile
            )
        if change.what == "step-finished":
            fields.update(
                state=lane.state, image=lane.image, seconds=_rounded(lane.seconds)
            )
        if step is not None:
            fields.update(position=step.position, instruction=step.text)
        if change.what == "instruction-finished" and step is not None:
            fields.update(
                cached=step.cached,
                seconds=_rounded(step.seconds),
                error=step.error or None,
            )
        if change.text:
            fields["text"] = change.text
        self._emit(change.what, **fields)

    def _run(self, change: Change) -> None:
        # A run's output goes whole with its run-finished, not line by line.
        if change.what == "output":
            return
        lane = change.lane
        fields: dict[str, Any] = {
            "phase": lane.kind,
            "role": lane.role,
            "id": lane.extension,
            "version": lane.version,
        }
        if change.what == "run-ended":
            fields.update(code=lane.code, seconds=_rounded(lane.seconds))
        if change.what == "run-finished":
            fields.update(
                state=lane.state,
                verdict=lane.verdict or None,
                seconds=_rounded(lane.seconds),
                output=lane.output,
                error=lane.error or None,
            )
        self._emit(change.what, **fields)

    def detected(self, report: DetectReport, *, final: bool) -> None:
        with self._lock:
            self._emit("report" if final else "detected", report=report.to_dict())

    def log(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._emit(
                "log",
                level=_level(record).lower(),
                phase=getattr(record, "phase", None),
                message=record.getMessage(),
            )

    def summary(self, report: Report, stats: Mapping[str, ImageStats]) -> None:
        with self._lock:
            self._emit(
                "summary",
                layers={
                    k: {"added": s.layers, "bytes": s.size} for k, s in stats.items()
                },
            )
            self._emit("report", report=report.to_dict())

    def error(self, error: ImgextError) -> None:
        super().error(error)
        with self._lock:
            self._emit(
                "error",
                exit_code=int(error.exit_code),
                message=error.message,
                hint=next_step(error),
                extension=getattr(error, "extension", None),
                path=getattr(error, "path", None),
                line=getattr(error, "line", None),
                output=self.tracker.failed_output() or getattr(error, "output", None),
            )


_ICONS = {"done": ("✔", "green"), "failed": ("✘", "red"), "cancelled": ("-", "yellow")}


class LiveDisplay(Display):
    """A live view on a terminal: finished steps scroll, running ones redraw."""

    def __init__(self, console: Console | None = None, *, tail: int = 4) -> None:
        super().__init__()
        self.console = console or Console(highlight=False)
        self._tail = tail
        self._pending: list[RenderableType] = []
        self._tail_shown = False
        self._spinners: dict[str, Spinner] = {}
        # One thread of ours does all the drawing: rich's Live cannot take
        # prints from several threads while it redraws without tearing.
        self._live = Live(
            console=self.console,
            get_renderable=self._render,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._stop = threading.Event()
        self._live.start()
        self._drawer = threading.Thread(target=self._draw, daemon=True)
        self._drawer.start()

    def _draw(self) -> None:
        while not self._stop.wait(0.1):
            self._flush()
            self._live.refresh()

    def show(self, change: Change) -> None:
        lane = change.lane
        step = change.instruction
        if change.what == "instruction-finished" and step is not None:
            result = _instruction_result(step)
            style = {"ERROR": "red", "CACHED": "cyan", "STOPPED": "yellow"}.get(
                result, "green"
            )
            # The result goes before the step, so that a long step is what
            # gets cut at the edge of the terminal.
            self._pending.append(
                Text.assemble(
                    (f"{lane.kind:<5} ", "bold"),
                    (f"{lane.extension} ", "magenta"),
                    (f"{result:>7}  ", style),
                    step.title.replace("\n", " "),
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
            if step.error and step.output:
                self._tail_shown = True
                self._pending.append(
                    Text("  output of the failing step (last lines):", "red")
                )
                for line in list(step.output)[-OUTPUT_TAIL:]:
                    self._pending.append(
                        Text(f"  | {line}", "dim", no_wrap=True, overflow="ellipsis")
                    )
        elif change.what == "warning":
            self._pending.append(
                Text.assemble(
                    ("warning ", "yellow"),
                    f"{lane.kind} {lane.extension}: ",
                    change.text,
                )
            )
        elif change.what == "run-finished":
            self._run_finished(lane)
        elif change.what == "step-finished" and lane.state != "running":
            icon, style = _ICONS.get(lane.state, ("", ""))
            self._pending.append(
                Text.assemble(
                    (f"{icon} ", style),
                    (
                        f"{lane.kind} {lane.index}/{lane.total} {lane.extension}: "
                        f"{lane.state} in {_seconds(lane.seconds)}",
                        "bold",
                    ),
                )
            )

    def _run_finished(self, lane: Lane) -> None:
        # A detect that did not pass is routine (another group may), so it
        # gets no cross unless it ended in an error.
        icon, style = _ICONS.get(lane.state, ("", ""))
        if lane.verdict in ("fail", "skip"):
            icon, style = "-", "dim"
        self._pending.append(
            Text.assemble(
                (f"{icon} ", style),
                (f"{lane.kind} ", "bold"),
                (f"{lane.role} "),
                (lane.name, "magenta"),
                f": {_run_result(lane)}",
                no_wrap=True,
                overflow="ellipsis",
            )
        )
        shown = lane.output if lane.kind == "generate" or lane.state == "failed" else []
        if lane.state == "failed" and shown:
            self._tail_shown = True
            self._pending.append(Text("  its output (last lines):", "red"))
        for line in shown[-OUTPUT_TAIL:]:
            self._pending.append(
                Text(f"  | {clean(line)}", "dim", no_wrap=True, overflow="ellipsis")
            )

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for renderable in pending:
            self.console.print(renderable, no_wrap=True, overflow="ellipsis", crop=True)

    def _render(self) -> RenderableType:
        with self._lock:
            columns: dict[str, list[RenderableType]] = {}
            for lane in self.tracker.order:
                # An ended run waits for the rest of its batch: still shown,
                # without a spinner, so it is clear what the batch waits for.
                if lane.state in ("running", "ended"):
                    columns.setdefault(lane.kind, []).extend(self._lane(lane))
        if not columns:
            return Text("")
        # Build and run side by side when both are at work.
        # Two columns short of the terminal: the terminal's `^C` echo after a
        # full line would wrap, and the view would be erased one line short.
        grid = Table.grid(padding=(0, 2))
        grid.width = max(20, self.console.width - 2)
        for _ in columns:
            grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_row(*(Group(*parts) for parts in columns.values()))
        return grid

    def _lane(self, lane: Lane) -> list[RenderableType]:
        spinner = self._spinners.setdefault(
            f"{lane.kind}/{lane.extension}", Spinner("dots", style="blue")
        )
        title = Text.assemble(
            (f"{lane.kind} ", "bold"),
            (f"{lane.index}/{lane.total} " if lane.total else "", "bold"),
            (f"{lane.role} " if lane.role else ""),
            (lane.name, "magenta"),
        )
        grid = Table.grid(expand=True)
        grid.add_column(width=2)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        if lane.state == "ended":
            title.append(f"  exit {lane.code}", "dim")
            grid.add_row("·", title, Text(_seconds(lane.seconds), "dim"))
            return [grid]
        grid.add_row(spinner, title, Text(_seconds(time.monotonic() - lane.started)))
        step = lane.running
        if step is not None:
            began = step.started if step.started is not None else time.monotonic()
            grid.add_row(
                "",
                Text(step.title.replace("\n", " ")),
                Text(_seconds(time.monotonic() - began), "dim"),
            )
            for line in list(step.output)[-self._tail :]:
                grid.add_row("", Text(f"  {line}", "dim"), "")
        return [grid]

    def log(self, record: logging.LogRecord) -> None:
        style = {"WARNING": "yellow", "ERROR": "red"}.get(record.levelname, "dim")
        phase = getattr(record, "phase", None)
        where = f"[{phase}] " if phase else ""
        text = f"{_level(record).lower()}: {where}{record.getMessage()}"
        with self._lock:
            self._pending.append(Text(clean(text), style))
        if self._stop.is_set():
            self._flush()

    def summary(self, report: Report, stats: Mapping[str, ImageStats]) -> None:
        self.close()
        rows = _summary_rows(report, stats)
        widths = [max(len(r[i]) for r in [SUMMARY_HEADER, *rows]) for i in range(8)]
        table = Table(show_edge=False, header_style="bold")
        if sum(widths) + 3 * len(widths) <= self.console.width:
            for name in SUMMARY_HEADER:
                table.add_column(name, overflow="fold")
            for row in rows:
                table.add_row(*row)
        else:
            # Too narrow for a row per kind: a column per kind instead.
            table.add_column("")
            for row in rows:
                table.add_column(row[0], overflow="fold")
            for index, name in enumerate(SUMMARY_HEADER[1:], start=1):
                table.add_row(name, *(row[index] for row in rows))
        self.console.print(table)
        self.console.print(
            f"done in {report.seconds:.1f}s with the {report.builder or 'no'} builder",
            style="bold green",
        )

    def detected(self, report: DetectReport, *, final: bool) -> None:
        if not final:
            return
        self.close()
        table = Table(show_edge=False, header_style="bold")
        for name in DETECTED_HEADER:
            table.add_column(name, overflow="fold")
        for row in _detected_rows(report):
            table.add_row(*row)
        self.console.print(table)
        self.console.print(_run_image_line(report))
        self.console.print(f"done in {report.seconds:.2f}s", style="bold green")

    def error(self, error: ImgextError) -> None:
        super().error(error)
        self.close()
        shown = [] if self._tail_shown else (self.tracker.failed_output() or None)
        lines = error_lines(error, shown)
        for index, line in enumerate(lines):
            self.console.print(Text(line, "bold red" if index == 0 else ""))

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._drawer.join()
        self._live.stop()
        self._flush()


class _Forward(logging.Handler):
    def __init__(self, display: Display) -> None:
        super().__init__()
        self._display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._display.log(record)
        except Exception:
            self.handleError(record)


@contextmanager
def routed_logs(display: Display) -> Iterator[None]:
    """Send the `imgext` logger's records through `display` while it lives.

    A record written straight to the terminal would tear a live display.
    """
    logger = logging.getLogger("imgext")
    saved = list(logger.handlers)
    forward = _Forward(display)
    for handler in saved:
        logger.removeHandler(handler)
    logger.addHandler(forward)
    try:
        yield
    finally:
        logger.removeHandler(forward)
        for handler in saved:
            logger.addHandler(handler)


def choose(
    *, json_output: bool = False, quiet: bool = False, stream: IO[str] | None = None
) -> Display:
    """The display for a command: JSON, quiet, live on a terminal, else plain."""
    out = stream or sys.stdout
    if json_output:
        return JsonDisplay(out)
    if quiet:
        return QuietDisplay()
    if out.isatty():
        return LiveDisplay(Console(file=out, highlight=False))
    return PlainDisplay(out)
