"""What users see while detect and generate run: the events the phases emit
from real executables on this host, and how each display shows them."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from imgext import ExitCode, ImgextError, Interrupted
from imgext._events import Event, RunEnded, RunFinished, RunStarted
from imgext._prepare import Prepared, PrepareOptions, prepare
from imgext._progress import (
    JsonDisplay,
    LiveDisplay,
    PlainDisplay,
    QuietDisplay,
    Tracker,
)
from imgext._runner import Batch, HostRunner, Job, JobMarkers, Target
from tests import cnb

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
KEPT = "run-switch,build-ext,run-ext"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return cnb.sample_store(tmp_path_factory.mktemp("store"))


def run(
    tmp_path: Path,
    store: tuple[Path, Path, Path],
    listener: Any,
    requires: str = KEPT,
) -> Prepared:
    """Detect and generate of the sample store on this host, as `imgext detect`
    runs them, with `listener` hearing every event."""
    extensions, buildpacks, order = store
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    return prepare(
        PrepareOptions(
            app=app,
            layers=tmp_path / "layers",
            extensions=extensions,
            buildpacks=buildpacks,
            order=order,
            platform=cnb.platform(tmp_path / "platform", BP_REQUIRES=requires),
        ),
        on_event=listener,
    )


def test_every_member_gets_one_verdict_and_executables_get_a_time(
    tmp_path: Path, store: tuple[Path, Path, Path]
) -> None:
    seen: list[Event] = []
    run(tmp_path, store, seen.append)
    finished = [e for e in seen if isinstance(e, RunFinished)]
    detect = {e.id: e for e in finished if e.phase == "detect"}
    # Each member ran bin/detect once: one verdict each.
    assert len(detect) == len([e for e in finished if e.phase == "detect"])
    assert detect["test/never"].verdict == "skip"  # optional and failed
    assert detect["test/never"].output == ("not for this app",)
    assert detect["test/requirer"].verdict == "pass"
    assert detect["test/requirer"].role == "buildpack"
    # A static plan runs nothing, so it has no time; the others do.
    assert detect["test/run-switch"].seconds is None
    assert all(
        e.seconds is not None for k, e in detect.items() if k != "test/run-switch"
    )
    generate = [e for e in finished if e.phase == "generate"]
    assert [e.id for e in generate] == [
        "test/run-switch",
        "test/build-ext",
        "test/run-ext",
    ]
    assert {e.verdict for e in generate} == {"done"}
    assert generate[1].output == ("build-ext generated for linux",)
    # Each executable that ran was announced as it started and ended, in order.
    for event in finished:
        if event.seconds is None:
            continue
        mine = [
            type(e).__name__
            for e in seen
            if isinstance(e, RunStarted | RunEnded | RunFinished)
            and (e.phase, e.id) == (event.phase, event.id)
        ]
        assert mine == ["RunStarted", "RunEnded", "RunFinished"]


def test_plain_lines_for_detect_are_clean_and_end_with_the_group(
    tmp_path: Path, store: tuple[Path, Path, Path]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    display = PlainDisplay(out, err)
    prepared = run(tmp_path, store, display)
    display.detected(prepared.report(tmp_path / "layers"), final=True)
    text = out.getvalue()
    assert not CONTROL.search(text.replace("\n", ""))
    lines = text.splitlines()
    assert any(
        re.match(r"^\d{4}-\d\d-\d\dT\S+Z detect extension test/build-ext@0.0.1  ", line)
        for line in lines
    )
    assert any(line.endswith("test/build-ext@0.0.1  bin/detect") for line in lines)
    assert any("test/never@0.0.1  skip in " in line for line in lines)
    # What generate prints is shown; what a passing detect prints is not.
    assert any(line.endswith("| build-ext generated for linux") for line in lines)
    assert not any("not for this app" in line for line in lines)
    table = lines[lines.index(next(x for x in lines if x.split()[:1] == ["id"])) :]
    assert table[1].split()[:4] == ["extension", "test/run-switch", "0.0.1", "run"]
    assert table[2].split()[:4] == ["extension", "test/build-ext", "0.0.1", "build"]
    assert table[4].split()[:3] == ["buildpack", "test/requirer", "0.0.1"]
    assert table[-2] == "run image: imgext-test/run-alt:tiny (to be extended)"
    assert re.fullmatch(r"done in \d+\.\d\ds", table[-1])


def test_json_events_parse_and_end_with_the_detect_report(
    tmp_path: Path, store: tuple[Path, Path, Path]
) -> None:
    out = io.StringIO()
    display = JsonDisplay(out)
    prepared = run(tmp_path, store, display)
    report = prepared.report(tmp_path / "layers")
    display.detected(report, final=True)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[-1] == {
        "time": events[-1]["time"],
        "event": "report",
        "report": report.to_dict(),
    }
    names = {e["event"] for e in events}
    assert {"run-started", "run-ended", "run-finished"} <= names
    # Output goes whole with run-finished, not line by line.
    assert "output" not in names
    build_ext = [
        e
        for e in events
        if e["event"] == "run-finished"
        and e["phase"] == "generate"
        and e["id"] == "test/build-ext"
    ]
    assert build_ext[0]["output"] == ["build-ext generated for linux"]
    assert build_ext[0]["seconds"] > 0
    extensions = {e["id"]: e for e in report.to_dict()["extensions"]}
    assert extensions["test/build-ext"]["dockerfiles"] == ["build"]
    assert extensions["test/build-ext"]["generate_seconds"] > 0
    assert extensions["test/run-switch"]["detect_seconds"] is None


def terminal() -> Console:
    return Console(
        file=io.StringIO(),
        force_terminal=True,
        width=120,
        color_system=None,
        record=True,
    )


def test_live_display_shows_each_run_and_the_group(
    tmp_path: Path, store: tuple[Path, Path, Path]
) -> None:
    console = terminal()
    with LiveDisplay(console) as display:
        prepared = run(tmp_path, store, display)
        display.detected(prepared.report(tmp_path / "layers"), final=True)
    text = console.export_text()
    assert "✔ detect extension test/build-ext@0.0.1: pass in " in text
    assert "- detect extension test/never@0.0.1: skip in " in text
    assert "✔ generate extension test/run-switch@0.0.1: done" in text
    assert "  | build-ext generated for linux" in text
    assert "run image: imgext-test/run-alt:tiny (to be extended)" in text
    for header in ("id", "version", "Dockerfiles", "time"):
        assert header in text


def test_failing_generate_shows_its_output_once_and_the_hint(
    tmp_path: Path, store: tuple[Path, Path, Path]
) -> None:
    console = terminal()
    with LiveDisplay(console) as display:
        with pytest.raises(ImgextError) as failed:
            run(tmp_path, store, display, requires="fails")
        display.error(failed.value)
    assert failed.value.exit_code == ExitCode.EXTENSION_FAILED
    text = console.export_text()
    assert "✘ generate extension test/fails@0.0.1: error in " in text
    assert ": exit code 3" in text
    assert text.count("| cannot reach the package index") == 1
    assert "error: extension test/fails: bin/generate failed (exit code 3)" in text
    assert "hint: " in text


def test_failing_generate_in_json_and_quiet(
    tmp_path: Path, store: tuple[Path, Path, Path]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    displays = [JsonDisplay(out), QuietDisplay(err)]

    def both(event: Event) -> None:
        for display in displays:
            display(event)

    # What an earlier run wrote is left as it was: nothing is written until
    # detect and generate are both through.
    layers = tmp_path / "layers"
    layers.mkdir()
    (layers / "group.toml").write_text("# earlier\n")
    with pytest.raises(ImgextError) as failed:
        run(tmp_path, store, both, requires="fails")
    assert [p.name for p in layers.iterdir()] == ["group.toml"]
    assert (layers / "group.toml").read_text() == "# earlier\n"
    for display in displays:
        display.error(failed.value)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    finished = [e for e in events if e["event"] == "run-finished"][-1]
    assert (finished["id"], finished["state"]) == ("test/fails", "failed")
    assert finished["output"] == ["cannot reach the package index"]
    error = events[-1]
    assert error["event"] == "error" and error["exit_code"] == 91
    assert error["output"] == ["cannot reach the package index"]
    quiet = err.getvalue().splitlines()
    assert (
        quiet[0] == "imgext: error: extension test/fails: bin/generate failed "
        "(exit code 3)"
    )
    assert "  | cannot reach the package index" in quiet


def test_an_ended_run_waits_without_a_spinner() -> None:
    console = terminal()
    display = LiveDisplay(console)
    try:
        display(RunStarted("detect", "buildpack", "demo/slow", "1"))
        display(RunStarted("detect", "extension", "demo/quick", "2"))
        display(RunEnded("detect", "extension", "demo/quick", "2", 0, 0.01))
        probe = Console(width=120, record=True, file=io.StringIO())
        probe.print(display._render())
        screen = probe.export_text()
    finally:
        display.close()
    slow, quick = screen.splitlines()[:2]
    assert "detect buildpack demo/slow@1" in slow
    assert quick.startswith("· detect extension demo/quick@2  exit 0")
    assert quick.rstrip().endswith("0.01s")


def test_interrupt_cancels_running_detects() -> None:
    tracker = Tracker()
    tracker.handle(RunStarted("detect", "buildpack", "demo/slow", "1"))
    tracker.handle(RunStarted("detect", "extension", "demo/quick", "2"))
    tracker.handle(RunEnded("detect", "extension", "demo/quick", "2", 0, 0.01))
    changes = tracker.fail(Interrupted("interrupted"))
    assert [(c.what, c.lane.extension, c.lane.state) for c in changes] == [
        ("run-finished", "demo/slow", "cancelled"),
        ("run-finished", "demo/quick", "cancelled"),
    ]
    # The ended one keeps the time it took.
    assert changes[1].lane.seconds == 0.01


def test_markers_split_across_reads_are_joined() -> None:
    heard: list[tuple[str, int | None]] = []
    markers = JobMarkers(lambda job, code: heard.append((job, code)))
    stream = (
        b"@@imgext-job start j0\n@@imgext-job start j1\n"
        b"sh: oops\n@@imgext-job end j1 100\n@@imgext-job end j0 0"
    )
    for index in range(0, len(stream), 7):
        markers.feed(stream[index : index + 7])
    markers.close()
    assert heard == [("j0", None), ("j1", None), ("j1", 100), ("j0", 0)]
    assert bytes(markers.other) == b"sh: oops\n"


def test_host_runner_tells_of_each_job_as_it_goes(tmp_path: Path) -> None:
    heard: list[tuple[str, int | None]] = []
    with HostRunner(tmp_path, None, Target()) as runner:
        batch: Batch = runner.batch("b")
        for name, code in (("one", 0), ("two", 3), ("three", 0)):
            batch.jobs.append(Job(name, "/bin/sh", ("-c", f"exit {code}"), ()))
        runner.run(
            batch, parallel=False, on_job=lambda job, code: heard.append((job, code))
        )
    # Serial batches stop at the first failure: three never starts.
    assert heard == [("one", None), ("one", 0), ("two", None), ("two", 3)]
