from __future__ import annotations

import io
import json
import logging
import re
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from imgext import ImageReport, Interrupted, Report, StepFailedError, StepReport
from imgext._events import StepFinished, StepOutput, StepStarted
from imgext._progress import (
    ImageStats,
    JsonDisplay,
    LiveDisplay,
    PlainDisplay,
    QuietDisplay,
    Tracker,
    choose,
    clean,
    error_lines,
    human_size,
    image_stats,
    routed_logs,
)

from ..streams import NAMES, events

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def report() -> Report:
    return Report(
        build=None,
        run=ImageReport(
            base="imgext-test/run:tiny",
            base_id="sha256:" + "1" * 64,
            image="sha256:" + "2" * 64,
            tag="imgext-test/run:tiny-extended",
            user="1000:1000",
            steps=[StepReport("demo/hello", "run.Dockerfile", "sha256:" + "2" * 64, 2)],
            rebasable=True,
            top_layer="sha256:" + "3" * 64,
        ),
        builder="buildkit",
        seconds=2.5,
    )


def failure(output: list[str] | None = None) -> StepFailedError:
    return StepFailedError(
        "the run Dockerfile failed: exit code: 3",
        extension="demo/hello",
        path="generated/buildkit-failing/run.Dockerfile",
        output=output,
        hint="fix the extension's Dockerfile",
    )


def play(display: Any, name: str) -> None:
    for event in events(name):
        display(event)


@pytest.mark.parametrize("name", NAMES)
def test_plain_lines_are_timestamped_and_clean(name: str) -> None:
    out = io.StringIO()
    play(PlainDisplay(out, io.StringIO()), name)
    lines = out.getvalue().splitlines()
    assert lines
    for line in lines:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run   demo/hello  ", line)
        assert not CONTROL.search(line), line


def test_plain_shows_steps_cached_durations_and_output() -> None:
    out = io.StringIO()
    play(PlainDisplay(out, io.StringIO()), "buildkit-ok")
    text = out.getvalue()
    assert "[1/4] FROM docker.io/imgext-test/run:tiny: CACHED" in text
    assert "| installing hello" in text
    assert re.search(r"\[3/4\] 1\.\ds$", text, re.MULTILINE)
    assert "imgext-tmp" not in text


def test_plain_cached_rebuild_says_cached_for_each_step() -> None:
    out = io.StringIO()
    play(PlainDisplay(out, io.StringIO()), "classic-cached")
    text = out.getvalue()
    assert "[5/9] RUN echo" in text
    assert text.count(": CACHED") >= 6
    assert "Using cache" not in text and "Running in" not in text


def test_classic_stderr_colours_are_removed() -> None:
    out = io.StringIO()
    play(PlainDisplay(out, io.StringIO()), "classic-failing")
    assert "| E: Unable to locate package hello" in out.getvalue()
    assert "\x1b" not in out.getvalue()


@pytest.mark.parametrize("name", ["buildkit-failing", "classic-failing"])
def test_failure_marks_the_step_and_shows_its_own_output(name: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    display = PlainDisplay(out, err)
    play(display, name)
    display.error(failure(["stale line from the error"]))
    assert re.search(r"\[\d/\d\] ERROR$", out.getvalue(), re.MULTILINE)
    assert "FAILED in" in out.getvalue()
    message = err.getvalue()
    assert message.startswith("imgext: error: ")
    assert "  | E: Unable to locate package hello" in message
    assert "stale line" not in message
    assert "hint: fix the extension's Dockerfile" in message


def test_failing_step_is_found_in_the_buildkit_trace() -> None:
    tracker = Tracker()
    for event in events("buildkit-failing"):
        tracker.handle(event)
    assert tracker.failed_output() == [
        "fetching hello",
        "E: Unable to locate package hello",
    ]


def test_other_lanes_are_cancelled_when_one_fails() -> None:
    tracker = Tracker()
    tracker.handle(StepStarted("build", 1, 1, "demo/slow", "build.Dockerfile"))
    tracker.handle(StepStarted("run", 1, 1, "demo/hello", "run.Dockerfile"))
    changes = tracker.fail(
        StepFailedError("boom", extension="demo/hello", path="run.Dockerfile")
    )
    states = {lane.kind: lane.state for lane in tracker.order}
    assert states == {"build": "cancelled", "run": "failed"}
    assert [c.what for c in changes] == ["step-finished", "step-finished"]


def test_output_without_a_step_gets_a_lane() -> None:
    # A phase such as detect may report lines without a StepStarted.
    out = io.StringIO()
    display = PlainDisplay(out, io.StringIO())
    display(StepOutput("detect", "demo/hello", "pass"))
    assert out.getvalue().rstrip().endswith("detect demo/hello  | pass")


@pytest.mark.parametrize("name", NAMES)
def test_json_lines_parse_and_end_with_the_report(name: str) -> None:
    out = io.StringIO()
    display = JsonDisplay(out)
    play(display, name)
    if name.endswith("failing"):
        display.error(failure())
    else:
        display.summary(report(), {"run": ImageStats(2, 1234)})
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert objects[0]["event"] == "step-started"
    assert all({"time", "event"} <= set(o) for o in objects)
    last = objects[-1]
    if name.endswith("failing"):
        assert last["event"] == "error"
        assert last["exit_code"] == 102
        assert "E: Unable to locate package hello" in last["output"]
    else:
        assert last == {
            "time": last["time"],
            "event": "report",
            "report": report().to_dict(),
        }
        finished = [o for o in objects if o["event"] == "instruction-finished"]
        assert finished and all("cached" in o for o in finished)


def test_json_logs_are_events() -> None:
    out = io.StringIO()
    display = JsonDisplay(out)
    logger = logging.getLogger("imgext")
    with routed_logs(display):
        logger.warning("user is root", extra={"phase": "extend run"})
    event = json.loads(out.getvalue())
    assert event["event"] == "log"
    assert event["level"] == "warn"
    assert event["phase"] == "extend run"
    assert event["message"] == "user is root"


def test_routed_logs_restores_the_handlers() -> None:
    logger = logging.getLogger("imgext")
    before = list(logger.handlers)
    with routed_logs(QuietDisplay(io.StringIO())):
        assert logger.handlers != before
    assert logger.handlers == before


def test_listeners_are_thread_safe() -> None:
    out = io.StringIO()
    display = JsonDisplay(out)

    def feed(kind: str) -> None:
        for _ in range(20):
            for event in events("buildkit-ok", kind=kind):
                display(event)

    threads = [threading.Thread(target=feed, args=(k,)) for k in ("build", "run")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = out.getvalue().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds.count("build") == kinds.count("run") > 0


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=True, width=120, color_system=None, record=True
    )
    return console, buffer


def test_live_display_prints_steps_and_the_summary() -> None:
    console, _ = terminal()
    display = LiveDisplay(console)
    with display:
        play(display, "buildkit-ok")
        display.summary(report(), {"run": ImageStats(2, 1234)})
    text = console.export_text()
    assert "CACHED  [1/4] FROM" in text
    assert "[3/4] RUN echo" in text
    assert "✔ run 1/1 demo/hello: done" in text
    for header in ("base", "result", "tag", "user", "rebasable", "layers", "time"):
        assert header in text
    assert "2, 1.2 kB" in text
    assert "done in 2.5s with the buildkit builder" in text


def test_live_display_shows_the_failing_tail_once() -> None:
    console, _ = terminal()
    display = LiveDisplay(console)
    with display:
        play(display, "buildkit-failing")
        display.error(failure(["E: Unable to locate package hello"]))
    text = console.export_text()
    assert "ERROR  [3/3] RUN" in text
    assert text.count("| E: Unable to locate package hello") == 1
    assert "error: extension demo/hello" in text


def test_live_display_draws_running_lanes_side_by_side() -> None:
    console, _ = terminal()
    display = LiveDisplay(console)
    try:
        display(StepStarted("build", 1, 2, "demo/tools", "build.Dockerfile"))
        display(StepStarted("run", 1, 1, "demo/motd", "run.Dockerfile"))
        display(StepOutput("build", "demo/tools", "Step 1/2 : RUN sleep 5"))
        display(StepOutput("build", "demo/tools", "unpacking"))
        probe = Console(width=120, record=True, file=io.StringIO())
        probe.print(display._render())
        screen = probe.export_text()
    finally:
        display.close()
    first = screen.splitlines()[0]
    assert "build 1/2 demo/tools" in first and "run 1/1 demo/motd" in first
    assert "[1/2] RUN sleep 5" in screen
    assert "unpacking" in screen


def test_live_display_routes_log_records_above_the_view() -> None:
    console, _ = terminal()
    display = LiveDisplay(console)
    with display, routed_logs(display):
        logging.getLogger("imgext").warning("careful", extra={"phase": "extend"})
    assert "warn: [extend] careful" in console.export_text()


def test_quiet_prints_only_the_error() -> None:
    err = io.StringIO()
    display = QuietDisplay(err)
    play(display, "buildkit-failing")
    display.error(failure())
    assert err.getvalue().startswith("imgext: error: extension demo/hello")


def test_choose_picks_by_flags_and_terminal() -> None:
    pipe = io.StringIO()
    assert isinstance(choose(stream=pipe), PlainDisplay)
    assert isinstance(choose(json_output=True, stream=pipe), JsonDisplay)
    assert type(choose(quiet=True, stream=pipe)) is QuietDisplay


def test_finished_event_closes_the_lane() -> None:
    tracker = Tracker()
    tracker.handle(StepStarted("run", 1, 1, "demo/hello", "run.Dockerfile"))
    tracker.handle(StepOutput("run", "demo/hello", "Step 1/1 : RUN true"))
    tracker.handle(StepFinished("run", 1, "demo/hello", "sha256:ab", 0.5))
    lane = tracker.order[0]
    assert lane.state == "done"
    assert all(step.done for step in lane.instructions.values())


class FakeDaemon:
    def __init__(self, images: dict[str, dict[str, Any]]) -> None:
        self.images = images

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return self.images.get(ref)


def test_image_stats_counts_layers_above_the_base() -> None:
    base = {"RootFS": {"Layers": ["a", "b"]}, "Size": 1000}
    result = {"RootFS": {"Layers": ["a", "b", "c", "d"]}, "Size": 4000}
    r = report()
    assert r.run is not None
    daemon = FakeDaemon({r.run.base_id: base, r.run.image: result})
    assert image_stats(daemon, r) == {"run": ImageStats(2, 3000)}


def test_error_lines_end_with_the_hint() -> None:
    lines = error_lines(failure(["\x1b[91mred\x1b[0m"]))
    assert lines[0].startswith("error: extension demo/hello")
    assert "  | red" in lines
    assert lines[-1] == "  hint: fix the extension's Dockerfile"


def test_human_size() -> None:
    assert human_size(None) == "?"
    assert human_size(999) == "999 B"
    assert human_size(1_500_000) == "1.5 MB"
    assert human_size(3 * 10**12) == "3000.0 GB"


@given(st.text())
def test_clean_leaves_no_control_character(text: str) -> None:
    assert not CONTROL.search(clean(text).replace("\n", ""))


def test_interrupt_cancels_every_lane_and_blames_none() -> None:
    out = io.StringIO()
    display = PlainDisplay(out, io.StringIO())
    display(StepStarted("build", 1, 1, "demo/tools", "build.Dockerfile"))
    display(StepOutput("build", "demo/tools", "Step 1/1 : RUN sleep 9"))
    display.error(Interrupted("interrupted: no tag was moved"))
    assert "[1/1] RUN sleep 9: STOPPED" in out.getvalue()
    assert "CANCELLED in" in out.getvalue()
    assert display.tracker.failed_output() == []


def test_narrow_terminal_gets_a_column_per_kind() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=60, record=True)
    display = LiveDisplay(console)
    display.summary(report(), {"run": ImageStats(2, 1234)})
    lines = console.export_text().splitlines()
    assert any(line.split() == ["┃", "build", "┃", "run"] for line in lines)
    assert any("rebasable" in line and "true" in line for line in lines)
    assert all(len(line) <= 60 for line in lines)
