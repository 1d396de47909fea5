"""The extend phase: apply the generated Dockerfiles to the build and run images."""

from __future__ import annotations

import concurrent.futures
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _context, _export, _trace
from ._daemon import Builder, BuildFailure, Cancel, Daemon
from ._dockerfile import REBASABLE_LABEL, Kind
from ._errors import ImgextError, Interrupted, StepFailedError, UsageError
from ._events import BuildkitTrace, Listener, StepFinished, StepOutput, StepStarted
from ._events import ignore as ignore_events
from ._generated import (
    ExtensionDockerfile,
    dockerfiles,
    parse_platform_api,
    read_analyzed,
    read_group,
)
from ._report import ImageReport, Report, StepReport

log = logging.getLogger("imgext")

TEMP_REPOSITORY = "imgext-tmp"
_FAILED_COMMAND = re.compile(
    r"(?:executor failed running \[/bin/sh -c (?P<a>.*?)\]"
    r"|process \"/bin/sh -c (?P<b>.*?)\" did not complete"
    r"|The command '/bin/sh -c (?P<c>.*?)' returned)",
    re.DOTALL,
)
_REBASABLE_FALSE = (
    f"ARG base_image\nFROM ${{base_image}}\nLABEL {REBASABLE_LABEL}=false\n"
).encode()


@dataclass(frozen=True)
class ExtendOptions:
    """Inputs of the extend phase; paths default as in the lifecycle."""

    layers: Path
    generated: Path | None = None
    analyzed: Path | None = None
    group: Path | None = None
    app: Path = Path(".")
    platform_api: str = "0.13"
    kinds: tuple[Kind, ...] = (Kind.BUILD, Kind.RUN)
    build_image: str | None = None
    run_image: str | None = None
    build_tag: str | None = None
    run_tag: str | None = None
    network: str | None = None
    no_cache: bool = False
    builder: Builder = Builder.AUTO
    extended: Path | None = None


@dataclass(frozen=True)
class KindPlan:
    """The chain of Dockerfiles for one base image."""

    kind: Kind
    base: str
    tag: str
    dockerfiles: tuple[ExtensionDockerfile, ...]


@dataclass
class _Chain:
    """The state of one kind while it is being extended."""

    plan: KindPlan
    temp_tags: list[str] = field(default_factory=list)
    kept_tags: list[str] = field(default_factory=list)
    report: ImageReport | None = None


def plan(options: ExtendOptions) -> list[KindPlan]:
    """Read and validate everything on disk; nothing touches the daemon."""
    api = parse_platform_api(options.platform_api)
    group = read_group(options.group or options.layers / "group.toml")
    generated = options.generated or options.layers / "generated"
    analyzed_path = options.analyzed or options.layers / "analyzed.toml"
    analyzed = read_analyzed(analyzed_path) if analyzed_path.exists() else None
    plans = []
    for kind in options.kinds:
        found = dockerfiles(group, generated, kind, app=options.app, platform_api=api)
        if not found:
            continue
        base: str | None
        if kind is Kind.BUILD:
            base = options.build_image or (analyzed.build_image if analyzed else None)
        elif found[0].dockerfile.switches:
            base = found[0].dockerfile.base
            if not found[0].dockerfile.extends:
                found = found[1:]
        else:
            base = options.run_image or (analyzed.run_image if analyzed else None)
        if not base:
            raise UsageError(
                f"no {kind} image to extend: pass --{kind}-image or set "
                f"[{kind}-image] reference in {analyzed_path}"
            )
        tag = (options.build_tag if kind is Kind.BUILD else options.run_tag) or (
            default_tag(base)
        )
        plans.append(KindPlan(kind, base, tag, tuple(found)))
    return plans


def default_tag(base: str) -> str:
    """`<repository>:<tag>-extended`: never the base image's own tag."""
    if base.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{12,64}", base):
        return f"imgext/extended:{base.removeprefix('sha256:')[:12]}"
    name = base.split("@", 1)[0]
    repository, _, tag = name.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = name, "latest"
    return f"{repository}:{tag[:119]}-extended"


def extend(
    options: ExtendOptions,
    *,
    daemon: Daemon | None = None,
    on_event: Listener = ignore_events,
) -> Report:
    """Apply every Dockerfile of the plan; tag the results only if all succeed."""
    started = time.monotonic()
    plans = plan(options)
    report = Report()
    if not plans:
        log.info("no Dockerfiles to apply", extra={"phase": "extend"})
        report.seconds = time.monotonic() - started
        return report
    daemon = daemon or Daemon.connect()
    builder = _choose_builder(daemon, options.builder)
    report.builder = str(builder)
    run_id = uuid.uuid4().hex[:12]
    cancel = Cancel()
    chains = [_Chain(p) for p in plans]
    try:
        _run_parallel(daemon, chains, options, builder, run_id, cancel, on_event)
        _write_run_layout(daemon, chains, options)
        _move_tags(daemon, chains)
    except KeyboardInterrupt:
        cancel.set()
        raise Interrupted("interrupted: no tag was moved") from None
    finally:
        _clean_up(daemon, chains)
    for chain in chains:
        setattr(report, str(chain.plan.kind), chain.report)
    report.seconds = time.monotonic() - started
    return report


def _choose_builder(daemon: Daemon, wanted: Builder) -> Builder:
    available = daemon.buildkit_available()
    if wanted is Builder.BUILDKIT and not available:
        raise UsageError("the daemon does not offer BuildKit; use --builder classic")
    if wanted is Builder.AUTO:
        return Builder.BUILDKIT if available else Builder.CLASSIC
    return wanted


def _run_parallel(
    daemon: Daemon,
    chains: list[_Chain],
    options: ExtendOptions,
    builder: Builder,
    run_id: str,
    cancel: Cancel,
    on_event: Listener,
) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(chains)) as pool:
        futures = [
            pool.submit(
                _apply_chain,
                daemon.fork(),
                chain,
                options,
                builder,
                run_id,
                cancel,
                on_event,
            )
            for chain in chains
        ]
        try:
            pending = set(futures)
            while pending:
                # A short timeout keeps the main thread responsive to Ctrl-C.
                done, pending = concurrent.futures.wait(
                    pending,
                    timeout=0.2,
                    return_when=concurrent.futures.FIRST_EXCEPTION,
                )
                for future in done:
                    if future.exception() is not None:
                        cancel.set()
                        pending = set()
        except BaseException:
            cancel.set()
            raise
    errors = [e for f in futures if (e := f.exception()) is not None]
    # The first real failure explains the run; the others were cancelled by it.
    errors.sort(key=lambda e: isinstance(e, Interrupted))
    if errors:
        raise errors[0]


def _apply_chain(
    daemon: Daemon,
    chain: _Chain,
    options: ExtendOptions,
    builder: Builder,
    run_id: str,
    cancel: Cancel,
    on_event: Listener,
) -> None:
    kind_plan = chain.plan
    kind = kind_plan.kind
    phase = {"phase": f"extend {kind}"}
    base_info = daemon.ensure_image(kind_plan.base)
    base_id: str = base_info["Id"]
    original_user = _user(base_info)
    current = _temp_tag(run_id, kind, 0)
    if base_info.get("RepoTags") or base_info.get("RepoDigests"):
        chain.temp_tags.append(current)
    else:
        # Deleting the only tag of an untagged base would delete the base.
        chain.kept_tags.append(current)
    daemon.tag(base_id, current)
    info = base_info
    steps: list[StepReport] = []
    all_set_rebasable = True
    total = len(kind_plan.dockerfiles)
    # When a run Dockerfile has no LABEL for it at all, the result cannot be
    # rebasable: the last build sets the label to false itself, which saves the
    # extra build `_set_not_rebasable` would cost.
    surely_not_rebasable = kind is Kind.RUN and not all(
        d.dockerfile.sets_label(REBASABLE_LABEL) for d in kind_plan.dockerfiles
    )
    for index, step in enumerate(kind_plan.dockerfiles, start=1):
        cancel.check()
        tag = _temp_tag(run_id, kind, index)
        chain.temp_tags.append(tag)
        on_event(StepStarted(str(kind), index, total, step.extension, str(step.path)))
        began = time.monotonic()
        forced = (
            {REBASABLE_LABEL: "false"}
            if surely_not_rebasable and index == total
            else None
        )
        image = _apply_one(
            daemon, step, info, current, tag, options, builder, cancel, on_event, forced
        )
        seconds = time.monotonic() - began
        on_event(StepFinished(str(kind), index, step.extension, image, seconds))
        info = daemon.inspect_image(image) or {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        all_set_rebasable &= step.dockerfile.sets_label(REBASABLE_LABEL) and (
            labels.get(REBASABLE_LABEL) == "true"
        )
        user = _user(info)
        if index < total and _is_root(user):
            log.warning(
                "extension %s leaves the %s image's user as root (%s); "
                "later Dockerfiles run as root",
                step.extension,
                kind,
                step.path,
                extra=phase,
            )
        steps.append(StepReport(step.extension, str(step.path), image, seconds))
        current = tag
    final = info
    rebasable: bool | None = None
    if kind is Kind.RUN:
        rebasable = bool(steps) and all_set_rebasable
        labels = (final.get("Config") or {}).get("Labels") or {}
        if steps and labels.get(REBASABLE_LABEL) != str(rebasable).lower():
            final = _set_not_rebasable(
                daemon, run_id, chain, current, options, builder, cancel
            )
    final_user = _user(final)
    last = kind_plan.dockerfiles[-1] if kind_plan.dockerfiles else None
    if kind is Kind.RUN and last is not None and _is_root(final_user):
        raise StepFailedError(
            "the final user ID is 0 (root): the extended run image must end with "
            "a non-root user; add `USER <uid>:<gid>` after the steps that need root",
            extension=last.extension,
            path=str(last.path),
        )
    if kind is Kind.BUILD and last is not None and _is_root(final_user):
        log.warning(
            "the extended build image ends with user root; the lifecycle runs "
            "buildpacks as the original user anyway",
            extra=phase,
        )
    if _uid(final_user) != _uid(original_user):
        log.warning(
            "the extended %s image's user %r differs from the original %r",
            kind,
            final_user,
            original_user,
            extra=phase,
        )
    layers = (base_info.get("RootFS") or {}).get("Layers") or []
    chain.report = ImageReport(
        base=kind_plan.base,
        base_id=base_id,
        image=final["Id"],
        tag=kind_plan.tag,
        user=final_user,
        steps=steps,
        rebasable=rebasable,
        top_layer=layers[-1] if kind is Kind.RUN and layers else None,
    )


def _apply_one(
    daemon: Daemon,
    step: ExtensionDockerfile,
    previous: dict[str, Any],
    previous_ref: str,
    tag: str,
    options: ExtendOptions,
    builder: Builder,
    cancel: Cancel,
    on_event: Listener,
    labels: dict[str, str] | None,
) -> str:
    kind = str(step.kind)
    uid, _, gid = _user(previous).partition(":")
    buildargs = {
        # A fresh build_id per Dockerfile lets a RUN that mentions it bust the
        # cache on every build, as the lifecycle's does.
        "build_id": str(uuid.uuid4()),
        "user_id": uid,
        "group_id": gid,
        **dict(step.args),
        "base_image": previous_ref,
    }
    source = step.path.read_bytes()
    name = _context.dockerfile_name(source)
    traces: list[bytes] = []

    def trace(data: bytes) -> None:
        traces.append(data)
        on_event(BuildkitTrace(kind, step.extension, data))

    try:
        return daemon.build(
            _context_or_error(step, source, name),
            dockerfile=name,
            buildargs=buildargs,
            tag=tag,
            builder=builder,
            nocache=options.no_cache,
            network=options.network,
            cancel=cancel,
            on_output=lambda line: on_event(StepOutput(kind, step.extension, line)),
            on_trace=trace,
            labels=labels,
        )
    except BuildFailure as failure:
        raise _step_error(step, failure, traces) from None


def _context_or_error(
    step: ExtensionDockerfile, source: bytes, name: str
) -> Iterator[bytes]:
    if not step.dockerfile.reads_context:
        # Nothing is copied from the context, so the app directory, which can
        # be large, need not be sent at all.
        yield from _context.stream_dockerfile_only(source, name)
        return
    try:
        yield from _context.coalesce(_context.stream(step.context, source, name))
    except OSError as exc:
        raise StepFailedError(
            f"cannot read the build context {step.context}: {exc}",
            extension=step.extension,
            path=str(step.path),
        ) from None


def _step_error(
    step: ExtensionDockerfile, failure: BuildFailure, traces: list[bytes]
) -> StepFailedError:
    instruction = None
    match = _FAILED_COMMAND.search(failure.message)
    if match:
        command = next(g for g in match.groups() if g is not None)
        instruction = step.dockerfile.find_run(command)
    if instruction is None and failure.step:
        wanted = " ".join(failure.step.split())
        instruction = next(
            (
                i
                for i in step.dockerfile.instructions
                if " ".join(i.original.split()) == wanted
            ),
            None,
        )
    output = failure.output or _trace_output(traces)
    message = f"the {step.kind} Dockerfile failed: {failure.message}"
    return StepFailedError(
        message,
        extension=step.extension,
        path=str(step.path),
        instruction=instruction.original if instruction else failure.step,
        line=instruction.line if instruction else None,
        output=output[-20:],
        hint="fix the extension's Dockerfile, or the input that made it",
    )


def _trace_output(traces: list[bytes]) -> list[str]:
    # BuildKit sends a RUN's output only inside its trace events, never as stream.
    return _trace.failing_output(traces)


def _set_not_rebasable(
    daemon: Daemon,
    run_id: str,
    chain: _Chain,
    current: str,
    options: ExtendOptions,
    builder: Builder,
    cancel: Cancel,
) -> dict[str, Any]:
    # Not every run Dockerfile set io.buildpacks.rebasable=true, so the spec says
    # the result is not rebasable, whatever label it inherited from its base.
    tag = _temp_tag(run_id, Kind.RUN, len(chain.plan.dockerfiles) + 1)
    chain.temp_tags.append(tag)
    name = _context.dockerfile_name(_REBASABLE_FALSE)
    image = daemon.build(
        _context.stream_dockerfile_only(_REBASABLE_FALSE, name),
        dockerfile=name,
        buildargs={"base_image": current},
        tag=tag,
        builder=builder,
        nocache=options.no_cache,
        network=options.network,
        cancel=cancel,
        on_output=lambda line: None,
        on_trace=lambda data: None,
    )
    return daemon.inspect_image(image) or {}


def _write_run_layout(
    daemon: Daemon, chains: list[_Chain], options: ExtendOptions
) -> None:
    # The exporter reads the extended run image from a sparse layout; written
    # before any tag moves, so a failure here leaves the tags as they were.
    for chain in chains:
        if chain.plan.kind is Kind.RUN and chain.report and chain.report.steps:
            extended = options.extended or options.layers / "extended"
            path = _export.write_run_layout(daemon, chain.report, extended)
            chain.report.extended = str(path)


def _move_tags(daemon: Daemon, chains: list[_Chain]) -> None:
    moved: list[tuple[str, str | None]] = []
    try:
        for chain in chains:
            assert chain.report is not None
            previous = daemon.inspect_image(chain.report.tag)
            moved.append((chain.report.tag, previous["Id"] if previous else None))
            daemon.tag(chain.report.image, chain.report.tag)
    except BaseException:
        for tag, before in reversed(moved):
            if before:
                daemon.tag(before, tag)
            else:
                daemon.remove_tag(tag)
        raise


def _clean_up(daemon: Daemon, chains: list[_Chain]) -> None:
    # Every temporary tag is listed before it is made (Daemon.build tags only
    # after the build, never the daemon itself), so this list is complete.
    for chain in chains:
        for tag in reversed(chain.temp_tags):
            try:
                daemon.remove_tag(tag)
            except ImgextError as exc:
                log.warning("could not remove temporary tag %s: %s", tag, exc)
        for tag in chain.kept_tags:
            log.warning(
                "kept temporary tag %s: removing it would delete the untagged base "
                "image it names",
                tag,
                extra={"phase": "extend"},
            )


def _temp_tag(run_id: str, kind: Kind, index: int) -> str:
    return f"{TEMP_REPOSITORY}/{run_id}-{kind}:{index}"


def _user(info: dict[str, Any]) -> str:
    return str((info.get("Config") or {}).get("User") or "")


def _uid(user: str) -> str:
    return user.partition(":")[0]


def _is_root(user: str) -> bool:
    return _uid(user) in ("", "0", "root")
