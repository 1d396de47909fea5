"""The generate phase: run each extension's `bin/generate`, check what it left,
choose the run image, and lay the outputs out as the extend phase reads them."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from ._detect import JobClock, Member, PlanEntry
from ._dockerfile import Dockerfile, Kind, parse
from ._errors import ExtensionError, ExtensionOutputError, ImgextError
from ._events import Listener, RunFinished, ignore
from ._generated import NEW_LAYOUT_API, load_toml, read_args
from ._report import write_atomically
from ._runner import Job, Outcome, Runner, exit_text, read_outcome

log = logging.getLogger("imgext")
_PHASE = {"phase": "generate"}
RUN_IMAGE_CHECK_API = (0, 12)
_CONTEXTS = ("context", "context.build", "context.run")


@dataclass
class Output:
    """What one extension generated, checked; `folder` is a local copy."""

    extension: str
    folder: Path
    dockerfiles: dict[Kind, Dockerfile] = field(default_factory=dict)
    ignore_run: bool = False
    # How long bin/generate took; None when the extension has none.
    seconds: float | None = None

    @property
    def dir_name(self) -> str:
        return self.extension.replace("/", "_")

    @property
    def config(self) -> Path | None:
        path = self.folder / "extend-config.toml"
        return path if path.is_file() else None


@dataclass(frozen=True)
class RunImage:
    """The outcome of run image selection."""

    image: str | None
    extend: bool


def plan_for(extension: str, plan: Sequence[PlanEntry]) -> list[dict[str, Any]]:
    """The Buildpack Plan of an extension: the requirements of what it provides."""
    return [
        dict(require)
        for entry in plan
        if any(
            p.element.extension and p.element.id == extension for p in entry.providers
        )
        for require in entry.requires
    ]


def without_met(plan: Sequence[PlanEntry], met: set[str]) -> list[PlanEntry]:
    """The plan minus entries an extension met, so no buildpack meets them again."""
    return [e for e in plan if not any(r["name"] in met for r in e.requires)]


def generate(
    extensions: Sequence[Member],
    plan: Sequence[PlanEntry],
    runner: Runner,
    *,
    platform_env: Sequence[tuple[str, str]],
    build_config: Sequence[tuple[str, str]] = (),
    on_event: Listener = ignore,
) -> tuple[list[Output], list[PlanEntry]]:
    """Run the extensions' generate in group order; return outputs and the plan
    left for buildpacks."""
    batch = runner.batch("generate")
    batch.trees.append("out")
    remaining = list(plan)
    static: dict[str, tuple[Path, str]] = {}
    jobs: dict[str, Member] = {}
    for number, member in enumerate(extensions):
        component = member.component
        entries = plan_for(component.id, remaining)
        remaining = without_met(remaining, {e["name"] for e in entries})
        if not component.has_generate:
            static[component.id] = (
                runner.static_output(component.root, component.local),
                f"{component.root}/generate",
            )
            continue
        name = f"g{number}"
        jobs[name] = member
        output = batch.at(f"out/{component.id.replace('/', '_')}")
        plan_path = batch.at(f"{name}.plan")
        batch.files[f"{name}.plan"] = dumps_toml({"entries": entries}).encode()
        batch.folders.append(f"out/{component.id.replace('/', '_')}")
        batch.jobs.append(
            Job(
                name=name,
                executable=f"{component.root}/bin/generate",
                args=(output, runner.platform, plan_path),
                env=(
                    ("CNB_BP_PLAN_PATH", plan_path),
                    ("CNB_EXTENSION_DIR", component.root),
                    ("CNB_OUTPUT_DIR", output),
                    ("CNB_PLATFORM_DIR", runner.platform),
                    *runner.target.env(),
                ),
                platform_env=() if component.clear_env else tuple(platform_env),
                build_config=tuple(build_config),
            )
        )
    clock = JobClock(on_event, "generate", jobs)
    results = runner.run(batch, parallel=False, on_job=clock) if jobs else None
    outputs = []
    for number, member in enumerate(extensions):
        extension = member.component.id
        lines: tuple[str, ...] = ()
        seconds = None
        outcome: Outcome | None = None
        try:
            if extension in static:
                folder, shown = static[extension]
            else:
                assert results is not None
                outcome = read_outcome(results, f"g{number}")
                lines = (*outcome.stdout.splitlines(), *outcome.stderr.splitlines())
                seconds = clock.seconds(f"g{number}")
                _check_ran(extension, outcome)
                folder = results / "out" / extension.replace("/", "_")
                shown = batch.at(f"out/{extension.replace('/', '_')}")
            checked = check_output(extension, folder, shown=shown)
        except ImgextError as exc:
            # In short: the error itself follows, with the whole message.
            if isinstance(exc, ExtensionError) and outcome is not None:
                why = exit_text(outcome.code)
            else:
                why = "what it wrote breaks the contract"
            on_event(_finished(member, "error", seconds, lines, why))
            raise
        checked.seconds = seconds
        on_event(_finished(member, "done", seconds, lines))
        outputs.append(checked)
    return outputs, remaining


def _finished(
    member: Member,
    verdict: str,
    seconds: float | None,
    output: tuple[str, ...],
    error: str = "",
) -> RunFinished:
    return RunFinished(
        "generate",
        "extension",
        member.component.id,
        member.version,
        verdict,
        seconds,
        output,
        error,
    )


def _check_ran(extension: str, outcome: Outcome) -> None:
    # Displays show the output with the run's event; the log has it at debug.
    for stream in (outcome.stdout, outcome.stderr):
        for line in stream.splitlines():
            log.debug("%s | %s", extension, line, extra=_PHASE)
    if outcome.code == 0:
        return
    raise ExtensionError(
        f"extension {extension}: bin/generate failed ({exit_text(outcome.code)})",
        extension=extension,
        output=outcome.stderr.strip().splitlines() or outcome.stdout.splitlines(),
        hint="its output says why; run its bin/generate by hand to see more",
    )


def check_output(extension: str, folder: Path, *, shown: str = "") -> Output:
    """Validate Dockerfiles, extend-config.toml and context folders of one output."""
    output = Output(extension, folder)
    if not folder.is_dir():
        return output
    for kind in (Kind.BUILD, Kind.RUN):
        path = folder / f"{kind}.Dockerfile"
        if not path.is_file():
            continue
        where = PurePosixPath(shown or str(folder)) / path.name
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExtensionOutputError(
                f"cannot read {kind} Dockerfile: {exc}",
                extension=extension,
                path=str(where),
            ) from None
        output.dockerfiles[kind] = parse(
            source, path=Path(str(where)), kind=kind, extension=extension
        )
    if output.config is not None:
        for kind in (Kind.BUILD, Kind.RUN):
            read_args(output.config, kind, extension)
    present = [name for name in _CONTEXTS if (folder / name).is_dir()]
    if "context" in present and len(present) > 1:
        raise ExtensionOutputError(
            "context/ cannot be used together with context.build/ or context.run/",
            extension=extension,
            path=shown or str(folder),
        )
    return output


def select_run_image(outputs: Sequence[Output]) -> RunImage:
    """Walk run Dockerfiles last to first: the last switch names the run image,
    and run Dockerfiles before it are marked ignored."""
    image: str | None = None
    extend = False
    for output in reversed(outputs):
        dockerfile = output.dockerfiles.get(Kind.RUN)
        if dockerfile is None:
            continue
        if image is not None:
            output.ignore_run = True
            continue
        extend |= dockerfile.extends
        if dockerfile.switches:
            image = dockerfile.base
            log.debug(
                "extension %s switches the run image to %s",
                output.extension,
                image,
                extra=_PHASE,
            )
    return RunImage(image, extend)


def update_analyzed(
    analyzed: dict[str, Any],
    choice: RunImage,
    *,
    platform_api: tuple[int, int],
    known_run_images: Sequence[str] | None,
) -> dict[str, Any]:
    """`analyzed.toml` after run image selection; the input is left unchanged."""
    data = dict(analyzed)
    current = data.get("run-image") if isinstance(data.get("run-image"), dict) else {}
    assert isinstance(current, dict)
    is_new = choice.image is not None and (
        platform_api < RUN_IMAGE_CHECK_API or choice.image != current.get("image")
    )
    if is_new:
        assert choice.image is not None
        if known_run_images is not None and choice.image not in known_run_images:
            log.warning(
                "new run image %s is not listed in run.toml", choice.image, extra=_PHASE
            )
        # The target described the old run image, so it goes.
        current = {"reference": choice.image, "image": choice.image}
        if choice.extend:
            current["extend"] = True
        data["run-image"] = current
    elif choice.extend and "run-image" in data:
        data["run-image"] = {**current, "extend": True}
    return data


def write_generated(
    outputs: Sequence[Output], generated: Path, *, platform_api: tuple[int, int]
) -> None:
    """Replace `generated` with the outputs in the layout of `platform_api`."""
    generated.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{generated.name}.", dir=generated.parent))
    try:
        for output in outputs:
            if platform_api >= NEW_LAYOUT_API:
                _write_new_layout(output, fresh)
            else:
                _write_old_layout(output, fresh)
        old = generated.parent / f".{generated.name}.old-{uuid.uuid4().hex[:8]}"
        if generated.exists():
            os.rename(generated, old)
        os.rename(fresh, generated)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def _write_new_layout(output: Output, root: Path) -> None:
    folder = root / output.dir_name
    folder.mkdir()
    for kind in output.dockerfiles:
        name = f"{kind}.Dockerfile"
        if kind is Kind.RUN and output.ignore_run:
            name += ".ignore"
        shutil.copyfile(output.folder / f"{kind}.Dockerfile", folder / name)
    if output.config is not None:
        shutil.copyfile(output.config, folder / "extend-config.toml")
    for name in _CONTEXTS:
        if (output.folder / name).is_dir():
            shutil.copytree(output.folder / name, folder / name, symlinks=True)


def _write_old_layout(output: Output, root: Path) -> None:
    for kind in output.dockerfiles:
        folder = root / str(kind) / output.dir_name
        folder.mkdir(parents=True)
        name = (
            "Dockerfile.ignore"
            if kind is Kind.RUN and output.ignore_run
            else ("Dockerfile")
        )
        shutil.copyfile(output.folder / f"{kind}.Dockerfile", folder / name)
        if output.config is not None:
            shutil.copyfile(output.config, folder / "extend-config.toml")
    if any((output.folder / name).is_dir() for name in _CONTEXTS):
        log.debug(
            "extension %s: context folders are not used before platform API 0.13; "
            "the app folder is the build context",
            output.extension,
            extra=_PHASE,
        )


def read_run_images(path: Path | None) -> list[str] | None:
    """The images `run.toml` lists (with mirrors), or None when there is none."""
    if path is None or not path.is_file():
        return None
    data = load_toml(path, "run file")
    images = []
    for entry in data.get("images", []) if isinstance(data.get("images"), list) else []:
        if isinstance(entry, dict):
            images.append(str(entry.get("image", "")))
            images += [str(m) for m in entry.get("mirrors", []) or []]
    return [i for i in images if i]


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """Write `data` atomically, arrays of tables as `[[name]]` like the lifecycle."""
    write_atomically(path, dumps_toml(data))


def dumps_toml(data: dict[str, Any]) -> str:
    # tomli-w writes short arrays of tables inline; `[[group]]` blocks are what
    # the lifecycle writes and what people expect to read.
    return "\n".join(_table_lines(data, ())).lstrip("\n") + "\n"


def _table_lines(table: dict[str, Any], prefix: tuple[str, ...]) -> list[str]:
    lines = []
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict) or (
            isinstance(value, list)
            and value
            and all(isinstance(v, dict) for v in value)
        ):
            nested.append((key, value))
        else:
            lines.append(tomli_w.dumps({key: value}).rstrip("\n"))
    for key, value in nested:
        name = ".".join(_toml_key(k) for k in (*prefix, key))
        for table_value in [value] if isinstance(value, dict) else value:
            header = f"[{name}]" if isinstance(value, dict) else f"[[{name}]]"
            lines += ["", header, *_table_lines(table_value, (*prefix, key))]
    return lines


def _toml_key(key: str) -> str:
    return tomli_w.dumps({key: 0}).split(" = ", 1)[0]
