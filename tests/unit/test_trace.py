from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgext._trace import (
    Status,
    Trace,
    TraceError,
    Vertex,
    VertexLog,
    VertexStatus,
    VertexWarning,
    decode,
    encode,
    failing_output,
)

from ..streams import traces


def fold(name: str) -> Trace:
    trace = Trace()
    for data in traces(name):
        trace.add(decode(data))
    return trace


def steps(trace: Trace) -> dict[str, tuple[bool, bool]]:
    """Dockerfile steps by name: (cached, completed)."""
    return {
        v.name: (v.cached, v.completed is not None)
        for v in trace.vertexes.values()
        if v.name.startswith("[") and not v.name.startswith("[internal]")
    }


def test_recorded_build_has_every_step_and_its_output() -> None:
    trace = fold("buildkit-ok")
    names = list(steps(trace))
    assert names == [
        "[1/4] FROM docker.io/imgext-test/run:tiny",
        '[2/4] RUN echo "installing hello" && for i in 1 2 3; do echo "line $i"; done',
        '[3/4] RUN echo "to stderr" >&2 && sleep 1',
        "[4/4] COPY greeting.txt /etc/greeting.txt",
    ]
    run = next(v for v in trace.vertexes.values() if v.name.startswith("[2/4]"))
    lines = ["installing hello", "line 1", "line 2", "line 3"]
    assert trace.output_lines(run.digest) == lines
    sleeper = next(v for v in trace.vertexes.values() if v.name.startswith("[3/4]"))
    assert trace.output_lines(sleeper.digest) == ["to stderr"]
    assert sleeper.seconds is not None and sleeper.seconds >= 1.0
    assert trace.failed() is None


def test_recorded_rebuild_is_cached() -> None:
    trace = fold("buildkit-cached")
    for name, (cached, completed) in steps(trace).items():
        assert completed, name
        if "RUN" in name or "COPY" in name:
            assert cached, name


def test_recorded_failure_names_the_step_and_keeps_its_output() -> None:
    trace = fold("buildkit-failing")
    failed = trace.failed()
    assert failed is not None
    assert failed.name.startswith("[3/3] RUN")
    assert "exit code: 3" in failed.error
    assert failing_output(traces("buildkit-failing")) == [
        "fetching hello",
        "E: Unable to locate package hello",
    ]


def test_statuses_of_the_export_are_decoded() -> None:
    found = [s for data in traces("buildkit-ok") for s in decode(data).statuses]
    assert any(s.id.startswith("writing image sha256:") for s in found)
    assert all(s.vertex.startswith("sha256:") for s in found)


def test_success_has_no_failing_output() -> None:
    assert failing_output(traces("buildkit-ok")) == []
    assert failing_output([]) == []


def test_garbage_is_a_trace_error() -> None:
    with pytest.raises(TraceError):
        decode(b"\x0a\xff\xff\xff\xff\xff\xff")


def test_unreadable_payloads_are_skipped_by_failing_output() -> None:
    good = traces("buildkit-failing")
    assert failing_output([b"\x0a\xff", *good]) == failing_output(good)


def test_a_vertex_resent_without_started_keeps_its_start() -> None:
    trace = Trace()
    trace.add(Status(vertexes=(Vertex("sha256:a", "[1/1] RUN x", started=10.0),)))
    trace.add(Status(vertexes=(Vertex("sha256:a", "[1/1] RUN x", completed=12.5),)))
    assert trace.vertexes["sha256:a"].seconds == pytest.approx(2.5)


def test_logs_accumulate_across_events() -> None:
    trace = Trace()
    trace.add(Status(logs=(VertexLog("sha256:a", 1, b"hel"),)))
    trace.add(Status(logs=(VertexLog("sha256:a", 2, b"lo\nworld\n"),)))
    assert trace.output_lines("sha256:a") == ["hello", "world"]


texts = st.text(max_size=30)
times = st.none() | st.integers(0, 2**33).map(lambda n: n / 4)
vertexes = st.builds(
    Vertex,
    digest=texts,
    name=texts,
    inputs=st.lists(texts, max_size=3).map(tuple),
    cached=st.booleans(),
    started=times,
    completed=times,
    error=texts,
)
statuses = st.builds(
    VertexStatus,
    id=texts,
    vertex=texts,
    name=texts,
    current=st.integers(-(2**63), 2**63 - 1),
    total=st.integers(0, 2**63 - 1),
    started=times,
    completed=times,
)
logs = st.builds(
    VertexLog,
    vertex=texts,
    stream=st.integers(0, 2),
    data=st.binary(max_size=50),
    timestamp=times,
)
warnings = st.builds(
    VertexWarning,
    vertex=texts,
    level=st.integers(0, 3),
    short=texts,
    detail=st.lists(texts, max_size=2).map(tuple),
    url=texts,
)
status_messages = st.builds(
    Status,
    vertexes=st.lists(vertexes, max_size=3).map(tuple),
    statuses=st.lists(statuses, max_size=3).map(tuple),
    logs=st.lists(logs, max_size=3).map(tuple),
    warnings=st.lists(warnings, max_size=2).map(tuple),
)


@given(status_messages)
def test_decode_inverts_encode(status: Status) -> None:
    assert decode(encode(status)) == status


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_trace_error(data: bytes) -> None:
    try:
        status = decode(data)
    except TraceError:
        return
    assert isinstance(status, Status)


@given(st.lists(status_messages, max_size=5))
def test_folding_never_loses_log_bytes(messages: list[Status]) -> None:
    trace = Trace()
    for message in messages:
        trace.add(message)
    for digest, state in trace.vertexes.items():
        sent = b"".join(
            log.data for m in messages for log in m.logs if log.vertex == digest
        )
        assert bytes(state.output) == sent
