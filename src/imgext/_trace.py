"""Decode BuildKit's `moby.buildkit.trace` progress events.

Each event is a protobuf `moby.buildkit.v1.StatusResponse` (BuildKit's
`api/services/control/control.proto`). Its message types are declared here in
code, only with the fields imgext reads; protobuf skips the rest (progress
groups, source ranges of warnings) as unknown fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.message import DecodeError

_PACKAGE = "moby.buildkit.v1"
_T = descriptor_pb2.FieldDescriptorProto

# (message, [(field, number, type, repeated, message type)])
_MESSAGES: list[tuple[str, list[tuple[str, int, int, bool, str]]]] = [
    (
        "Vertex",
        [
            ("digest", 1, _T.TYPE_STRING, False, ""),
            ("inputs", 2, _T.TYPE_STRING, True, ""),
            ("name", 3, _T.TYPE_STRING, False, ""),
            ("cached", 4, _T.TYPE_BOOL, False, ""),
            ("started", 5, _T.TYPE_MESSAGE, False, ".google.protobuf.Timestamp"),
            ("completed", 6, _T.TYPE_MESSAGE, False, ".google.protobuf.Timestamp"),
            ("error", 7, _T.TYPE_STRING, False, ""),
        ],
    ),
    (
        "VertexStatus",
        [
            ("ID", 1, _T.TYPE_STRING, False, ""),
            ("vertex", 2, _T.TYPE_STRING, False, ""),
            ("name", 3, _T.TYPE_STRING, False, ""),
            ("current", 4, _T.TYPE_INT64, False, ""),
            ("total", 5, _T.TYPE_INT64, False, ""),
            ("timestamp", 6, _T.TYPE_MESSAGE, False, ".google.protobuf.Timestamp"),
            ("started", 7, _T.TYPE_MESSAGE, False, ".google.protobuf.Timestamp"),
            ("completed", 8, _T.TYPE_MESSAGE, False, ".google.protobuf.Timestamp"),
        ],
    ),
    (
        "VertexLog",
        [
            ("vertex", 1, _T.TYPE_STRING, False, ""),
            ("timestamp", 2, _T.TYPE_MESSAGE, False, ".google.protobuf.Timestamp"),
            ("stream", 3, _T.TYPE_INT64, False, ""),
            ("msg", 4, _T.TYPE_BYTES, False, ""),
        ],
    ),
    (
        "VertexWarning",
        [
            ("vertex", 1, _T.TYPE_STRING, False, ""),
            ("level", 2, _T.TYPE_INT64, False, ""),
            ("short", 3, _T.TYPE_BYTES, False, ""),
            ("detail", 4, _T.TYPE_BYTES, True, ""),
            ("url", 5, _T.TYPE_STRING, False, ""),
        ],
    ),
    (
        "StatusResponse",
        [
            ("vertexes", 1, _T.TYPE_MESSAGE, True, ".moby.buildkit.v1.Vertex"),
            ("statuses", 2, _T.TYPE_MESSAGE, True, ".moby.buildkit.v1.VertexStatus"),
            ("logs", 3, _T.TYPE_MESSAGE, True, ".moby.buildkit.v1.VertexLog"),
            ("warnings", 4, _T.TYPE_MESSAGE, True, ".moby.buildkit.v1.VertexWarning"),
        ],
    ),
]


def _message_classes() -> dict[str, Any]:
    # A private pool: another library may register its own moby.buildkit.v1.
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    proto = descriptor_pb2.FileDescriptorProto(
        name="imgext/buildkit_status.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    for name, fields in _MESSAGES:
        message = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            message.field.add(
                name=field_name,
                number=number,
                type=kind,
                type_name=type_name or None,
                label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL,
            )
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")
        )
        for name, _ in _MESSAGES
    }


_CLASSES = _message_classes()
StatusResponseMessage: Any = _CLASSES["StatusResponse"]


class TraceError(ValueError):
    """The bytes are not a StatusResponse."""


@dataclass(frozen=True)
class Vertex:
    """One node of BuildKit's graph: for a Dockerfile, mostly one instruction."""

    digest: str
    name: str
    inputs: tuple[str, ...] = ()
    cached: bool = False
    started: float | None = None
    completed: float | None = None
    error: str = ""


@dataclass(frozen=True)
class VertexStatus:
    """Progress of a transfer or export inside a vertex."""

    id: str
    vertex: str
    name: str = ""
    current: int = 0
    total: int = 0
    started: float | None = None
    completed: float | None = None


@dataclass(frozen=True)
class VertexLog:
    """A chunk of a RUN's output: stream 1 is stdout, 2 stderr."""

    vertex: str
    stream: int
    data: bytes
    timestamp: float | None = None


@dataclass(frozen=True)
class VertexWarning:
    """A warning BuildKit raised about a vertex."""

    vertex: str
    level: int
    short: str
    detail: tuple[str, ...] = ()
    url: str = ""


@dataclass(frozen=True)
class Status:
    """One decoded StatusResponse."""

    vertexes: tuple[Vertex, ...] = ()
    statuses: tuple[VertexStatus, ...] = ()
    logs: tuple[VertexLog, ...] = ()
    warnings: tuple[VertexWarning, ...] = ()


def decode(data: bytes) -> Status:
    """Decode one `moby.buildkit.trace` payload (already base64-decoded)."""
    message = StatusResponseMessage()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise TraceError(f"not a BuildKit StatusResponse: {exc}") from None
    return Status(
        vertexes=tuple(
            Vertex(
                digest=v.digest,
                name=v.name,
                inputs=tuple(v.inputs),
                cached=v.cached,
                started=_time(v, "started"),
                completed=_time(v, "completed"),
                error=v.error,
            )
            for v in message.vertexes
        ),
        statuses=tuple(
            VertexStatus(
                id=s.ID,
                vertex=s.vertex,
                name=s.name,
                current=s.current,
                total=s.total,
                started=_time(s, "started"),
                completed=_time(s, "completed"),
            )
            for s in message.statuses
        ),
        logs=tuple(
            VertexLog(
                vertex=log.vertex,
                stream=log.stream,
                data=log.msg,
                timestamp=_time(log, "timestamp"),
            )
            for log in message.logs
        ),
        warnings=tuple(
            VertexWarning(
                vertex=w.vertex,
                level=w.level,
                short=w.short.decode("utf-8", "replace"),
                detail=tuple(d.decode("utf-8", "replace") for d in w.detail),
                url=w.url,
            )
            for w in message.warnings
        ),
    )


def encode(status: Status) -> bytes:
    """The inverse of `decode`, for tests and tools."""
    message = StatusResponseMessage()
    for v in status.vertexes:
        out = message.vertexes.add(
            digest=v.digest, name=v.name, cached=v.cached, error=v.error
        )
        out.inputs.extend(v.inputs)
        _set_time(out, "started", v.started)
        _set_time(out, "completed", v.completed)
    for s in status.statuses:
        out = message.statuses.add(
            ID=s.id, vertex=s.vertex, name=s.name, current=s.current, total=s.total
        )
        _set_time(out, "started", s.started)
        _set_time(out, "completed", s.completed)
    for log in status.logs:
        out = message.logs.add(vertex=log.vertex, stream=log.stream, msg=log.data)
        _set_time(out, "timestamp", log.timestamp)
    for w in status.warnings:
        message.warnings.add(
            vertex=w.vertex,
            level=w.level,
            short=w.short.encode(),
            detail=[d.encode() for d in w.detail],
            url=w.url,
        )
    result: bytes = message.SerializeToString()
    return result


def _time(message: Any, name: str) -> float | None:
    if not message.HasField(name):
        return None
    stamp = getattr(message, name)
    return float(stamp.seconds) + float(stamp.nanos) / 1e9


def _set_time(message: Any, name: str, value: float | None) -> None:
    if value is None:
        return
    stamp = getattr(message, name)
    seconds = int(value // 1)
    stamp.seconds = seconds
    stamp.nanos = min(round((value - seconds) * 1e9), 999_999_999)


@dataclass
class VertexState:
    """What is known of one vertex after the events seen so far."""

    digest: str
    name: str = ""
    cached: bool = False
    started: float | None = None
    completed: float | None = None
    error: str = ""
    output: bytearray = field(default_factory=bytearray)

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.completed is None:
            return None
        return max(0.0, self.completed - self.started)


class Trace:
    """Folds the StatusResponses of one build into the state of its vertexes.

    BuildKit resends a vertex each time it changes; the latest copy wins, and
    logs accumulate. Not thread-safe: use one per build.
    """

    def __init__(self) -> None:
        self.vertexes: dict[str, VertexState] = {}
        self.warnings: list[VertexWarning] = []

    def add(self, status: Status) -> list[VertexState]:
        """Merge one StatusResponse; return the vertexes it changed, in order."""
        changed: dict[str, VertexState] = {}
        for v in status.vertexes:
            state = self._state(v.digest)
            state.name = v.name or state.name
            state.cached = v.cached
            state.started = v.started if v.started is not None else state.started
            state.completed = v.completed
            state.error = v.error
            changed[v.digest] = state
        for log in status.logs:
            state = self._state(log.vertex)
            state.output.extend(log.data)
            changed[log.vertex] = state
        self.warnings.extend(status.warnings)
        return list(changed.values())

    def failed(self) -> VertexState | None:
        """The vertex that carries an error, if any."""
        return next((v for v in self.vertexes.values() if v.error), None)

    def output_lines(self, digest: str) -> list[str]:
        state = self.vertexes.get(digest)
        if state is None:
            return []
        return bytes(state.output).decode("utf-8", "replace").splitlines()

    def _state(self, digest: str) -> VertexState:
        state = self.vertexes.get(digest)
        if state is None:
            state = self.vertexes[digest] = VertexState(digest)
        return state


def failing_output(traces: list[bytes]) -> list[str]:
    """The output of the vertex that failed, from the raw trace payloads."""
    trace = Trace()
    for data in traces:
        try:
            trace.add(decode(data))
        except TraceError:
            continue
    failed = trace.failed()
    return trace.output_lines(failed.digest) if failed else []
