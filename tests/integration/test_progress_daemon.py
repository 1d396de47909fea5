"""What `imgext extend` shows while it works, against the real daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from imgext._cli import main

from ..conftest import BUILD_TINY, RUN_TINY, Layers

pytestmark = pytest.mark.daemon

BUILDERS = ["buildkit", "classic"]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

BUILD = """\
ARG base_image
FROM ${base_image}
ARG build_id=0
USER root
RUN echo "tools for $build_id" && echo "to stderr" >&2
ARG user_id
USER ${user_id}
"""
RUN = """\
ARG base_image
FROM ${base_image}
USER root
RUN echo "stable step" && echo stable > /etc/stable
LABEL io.buildpacks.rebasable=true
USER 1000:1000
"""
FAILING = """\
ARG base_image
FROM ${base_image}
ARG build_id=0
USER root
RUN echo "fetching $build_id" && echo "E: no such package" >&2 && exit 7
"""


def args(layers: Layers, prefix: str, builder: str, *more: str) -> list[str]:
    return [
        "extend",
        "--layers",
        str(layers.root),
        "--app",
        str(layers.app),
        "--build-tag",
        f"{prefix}-build:latest",
        "--run-tag",
        f"{prefix}-run:latest",
        "--builder",
        builder,
        *more,
    ]


def parse(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("builder", BUILDERS)
def test_json_events_then_the_report(
    layers: Layers,
    unique_tag: str,
    builder: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("demo/tools", build=BUILD, run=RUN)
    report = tmp_path / "report.json"
    code = main(args(layers, unique_tag, builder, "--json", "--report", str(report)))
    events = parse(capsys.readouterr().out)
    assert code == 0
    assert events[-1]["event"] == "report"
    assert events[-1]["report"] == json.loads(report.read_text())
    started = {
        (e["kind"], e["extension"]) for e in events if e["event"] == "step-started"
    }
    assert started == {("build", "demo/tools"), ("run", "demo/tools")}
    outputs = [
        e["text"] for e in events if e["event"] == "output" and e["kind"] == "build"
    ]
    assert any(line.startswith("tools for ") for line in outputs)
    assert "to stderr" in outputs
    finished = [e for e in events if e["event"] == "instruction-finished"]
    assert any(e["instruction"].startswith("RUN echo") for e in finished)
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["layers"]["run"]["added"] >= 1


@pytest.mark.parametrize("builder", BUILDERS)
def test_second_run_shows_cached_steps(
    layers: Layers,
    unique_tag: str,
    builder: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layers.analyzed(None, RUN_TINY)
    layers.extension("demo/stable", run=RUN)
    assert main(args(layers, unique_tag, builder, "--json")) == 0
    capsys.readouterr()
    assert main(args(layers, unique_tag, builder, "--json")) == 0
    events = parse(capsys.readouterr().out)
    runs = [
        e
        for e in events
        if e["event"] == "instruction-finished" and e["instruction"].startswith("RUN")
    ]
    assert runs and all(e["cached"] for e in runs)


@pytest.mark.parametrize("builder", BUILDERS)
def test_failing_run_in_plain_text(
    layers: Layers,
    unique_tag: str,
    builder: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layers.analyzed(BUILD_TINY, RUN_TINY)
    layers.extension("demo/tools", run=RUN)
    layers.extension("demo/broken", build=FAILING)
    code = main(args(layers, unique_tag, builder))
    captured = capsys.readouterr()
    assert code == 102
    for line in (captured.out + captured.err).splitlines():
        assert not CONTROL.search(line), line
    assert re.search(r"build demo/broken  \[\d/\d\] ERROR$", captured.out, re.M)
    assert "build demo/broken  FAILED in" in captured.out
    assert captured.err.startswith("imgext: error: extension demo/broken")
    assert "  | E: no such package" in captured.err
    assert "  | fetching " in captured.err
    # The tail is the failing step's own output, not the builder's chatter.
    assert "Step " not in captured.err and "---> " not in captured.err
    assert "hint: " in captured.err


def test_failing_run_in_json(
    layers: Layers, unique_tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    layers.analyzed(BUILD_TINY, None)
    layers.extension("demo/broken", build=FAILING)
    code = main(args(layers, unique_tag, "buildkit", "--json"))
    events = parse(capsys.readouterr().out)
    assert code == 102
    error = events[-1]
    assert error["event"] == "error"
    assert error["exit_code"] == 102
    assert error["extension"] == "demo/broken"
    assert error["line"] == 5
    assert "E: no such package" in error["output"]
