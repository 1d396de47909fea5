"""The detect phase: resolve the order into one group of extensions and
buildpacks by running their `bin/detect`, and the build plan they agree on.

Extensions are prepended to every buildpack group, all optional. A group passes
when no required member fails, at least one buildpack passes, and one choice
among the members' plan alternatives (`or`) leaves no requirement unprovided
and no provision unrequired; optional members that spoil a choice are dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ExitCode, ImgextError, UsageError
from ._events import Listener, RunEnded, RunFinished, RunStarted, ignore
from ._generated import load_toml
from ._runner import Batch, Job, Runner, exit_text, read_outcome

log = logging.getLogger("imgext")
_PHASE = {"phase": "detect"}

BUILDPACK = "buildpack"
EXTENSION = "extension"
DETECT_PASS = 0
DETECT_FAIL = 100
TARGETS_API = (0, 12)
PATH_VARIABLES_API = (0, 8)


class DetectionError(ImgextError):
    """No group of the order passed detection."""

    def __init__(self, message: str, *, errored: bool) -> None:
        super().__init__(
            message,
            hint="run with --log-level debug to see each bin/detect's output",
        )
        self.errored = errored
        self.exit_code = ExitCode.DETECT_ERRORED if errored else ExitCode.DETECT_FAILED


@dataclass(frozen=True)
class Element:
    """One entry of an order group."""

    id: str
    version: str = ""
    optional: bool = False
    extension: bool = False

    @property
    def kind(self) -> str:
        return EXTENSION if self.extension else BUILDPACK

    def __str__(self) -> str:
        return f"{self.id}@{self.version}" if self.version else self.id


@dataclass(frozen=True)
class ExtensionsOrder:
    """The `[[order-extensions]]` groups, standing first in every group."""

    order: tuple[tuple[Element, ...], ...]


Item = Element | ExtensionsOrder
Group = tuple[Item, ...]


@dataclass(frozen=True)
class Component:
    """A buildpack or extension as found on disk, by its descriptor."""

    kind: str
    id: str
    version: str
    api: str
    homepage: str
    clear_env: bool
    local: Path
    root: str
    has_detect: bool
    has_generate: bool
    targets: tuple[dict[str, Any], ...] = ()
    order: tuple[tuple[Element, ...], ...] = ()


@dataclass(frozen=True)
class Sections:
    """One alternative of a plan: what it requires and what it provides."""

    requires: tuple[dict[str, Any], ...] = ()
    provides: tuple[str, ...] = ()


@dataclass(frozen=True)
class DetectRun:
    """How one bin/detect ended; `seconds` is None when none ran."""

    code: int
    output: str = ""
    error: str | None = None
    alternatives: tuple[Sections, ...] = (Sections(),)
    seconds: float | None = None


@dataclass(frozen=True)
class Member:
    """A group member that ran detect, with the descriptor it ran from."""

    element: Element
    component: Component

    @property
    def version(self) -> str:
        """The version found on disk, else the one the order asked for."""
        return self.component.version or self.element.version

    def same(self, other: Member) -> bool:
        return (self.element.id, self.element.version, self.element.kind) == (
            other.element.id,
            other.element.version,
            other.element.kind,
        )

    def to_toml(self, *, extension_flag: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.element.id}
        if self.component.version:
            data["version"] = self.component.version
        if self.component.api:
            data["api"] = self.component.api
        if self.component.homepage:
            data["homepage"] = self.component.homepage
        if extension_flag and self.element.extension:
            data["extension"] = True
        return data


@dataclass
class PlanEntry:
    """A dependency of the build plan: who provides it, who requires it."""

    name: str
    providers: list[Member] = field(default_factory=list)
    requires: list[dict[str, Any]] = field(default_factory=list)

    def to_toml(self) -> dict[str, Any]:
        return {
            "providers": [p.to_toml(extension_flag=True) for p in self.providers],
            "requires": [dict(r) for r in self.requires],
        }


@dataclass
class Detected:
    """The result of detection: `group.toml` and `plan.toml`."""

    buildpacks: list[Member]
    extensions: list[Member]
    plan: list[PlanEntry]
    # How long each member's bin/detect took, by id; None when none ran.
    seconds: dict[str, float | None] = field(default_factory=dict)

    def group_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "group": [m.to_toml(extension_flag=False) for m in self.buildpacks]
        }
        if self.extensions:
            data["group-extensions"] = [
                m.to_toml(extension_flag=False) for m in self.extensions
            ]
        return data

    def plan_toml(self) -> dict[str, Any]:
        return {"entries": [entry.to_toml() for entry in self.plan]}


class _Failed(Exception):
    """A group did not pass; `errored` when some member ended in an error."""

    def __init__(self, errored: bool = False) -> None:
        super().__init__()
        self.errored = errored


def read_order(path: Path) -> list[Group]:
    """`order.toml`: buildpack groups, each with the extensions order in front."""
    data = load_toml(path, "order file")
    groups = [_elements(g, path, "order") for g in _groups(data, "order", path)]
    extension_groups = tuple(
        tuple(
            Element(e.id, e.version, optional=True, extension=True)
            for e in _elements(g, path, "order-extensions")
        )
        for g in _groups(data, "order-extensions", path)
    )
    if not extension_groups:
        return [tuple(g) for g in groups]
    front = ExtensionsOrder(extension_groups)
    return [(front, *g) for g in groups]


def _groups(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"{path}: [[{key}]] must be an array of tables")
    return [e.get("group", []) for e in entries]


def _elements(group: Any, path: Path, key: str) -> list[Element]:
    if not isinstance(group, list):
        raise UsageError(f"{path}: [[{key}.group]] must be an array of tables")
    found = []
    for entry in group:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise UsageError(f"{path}: every [[{key}.group]] entry needs an id")
        found.append(
            Element(
                entry["id"],
                str(entry.get("version", "")),
                optional=bool(entry.get("optional", False)),
            )
        )
    return found


class Store:
    """Finds buildpacks and extensions as `<folder>/<id, / as _>/<version>/`."""

    def __init__(
        self, extensions: Path | None, buildpacks: Path | None, runner: Runner
    ) -> None:
        self._folders = {EXTENSION: extensions, BUILDPACK: buildpacks}
        self._runner = runner
        self._found: dict[tuple[str, str, str], Component] = {}
        self._acyclic: set[tuple[str, str]] = set()

    def lookup(self, element: Element) -> Component:
        key = (element.kind, element.id, element.version)
        if key not in self._found:
            self._found[key] = self._read(element)
        return self._found[key]

    def check_nesting(self, element: Element) -> None:
        """Refuse a composite buildpack that contains itself, at any depth.

        The lifecycle recurses without end on one; the check walks each
        composite's order once, before detection expands it.
        """
        self._walk(element, ())

    def _walk(self, element: Element, path: tuple[tuple[str, str], ...]) -> None:
        try:
            component = self.lookup(element)
        except UsageError:
            # Detection reports a missing buildpack, if it ever gets there.
            return
        key = (component.id, component.version)
        if key in path:
            chain = " -> ".join(f"{i}@{v}" for i, v in (*path, key))
            raise UsageError(
                f"composite buildpack {component.id}@{component.version} contains "
                f"itself: {chain}",
                hint="fix the order of the buildpacks named, in the builder",
            )
        if key in self._acyclic or not component.order:
            return
        for group in component.order:
            for inner in group:
                self._walk(inner, (*path, key))
        self._acyclic.add(key)

    def _read(self, element: Element) -> Component:
        kind = element.kind
        base = self._folders[kind]
        if base is None:
            raise UsageError(f"no {kind}s folder to find {kind} {element} in")
        folder = base / element.id.replace("/", "_")
        version = element.version or _only_version(folder)
        folder = folder / version
        descriptor = folder / f"{kind}.toml"
        if not descriptor.is_file():
            raise UsageError(f"{kind} {element} not found: no {descriptor}")
        data = load_toml(descriptor, f"{kind} descriptor")
        info = data.get(kind)
        if not isinstance(info, dict) or info.get("id") != element.id:
            raise UsageError(f"{descriptor}: [{kind}] id is not {element.id!r}")
        order = tuple(
            tuple(_elements(g, descriptor, "order"))
            for g in (_groups(data, "order", descriptor) if kind == BUILDPACK else [])
        )
        targets = data.get("targets", [])
        return Component(
            kind=kind,
            id=element.id,
            version=str(info.get("version", version)),
            api=str(data.get("api", "")),
            homepage=str(info.get("homepage", "")),
            clear_env=bool(info.get("clear-env", False)),
            local=folder,
            root=self._runner.component_root(folder),
            has_detect=_exists(folder / "bin" / "detect"),
            has_generate=_exists(folder / "bin" / "generate"),
            targets=tuple(t for t in targets if isinstance(t, dict))
            if isinstance(targets, list)
            else (),
            order=order,
        )


def _exists(path: Path) -> bool:
    # A mirror of a builder image marks executables with `<name>.exists`.
    return path.exists() or path.with_name(f"{path.name}.exists").exists()


def _only_version(folder: Path) -> str:
    versions = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if len(versions) != 1:
        raise UsageError(
            f"{folder}: the order gives no version and there are "
            f"{len(versions)} to choose from"
        )
    return versions[0]


class Detector:
    """Walks the order the way the lifecycle's detector does."""

    def __init__(
        self,
        store: Store,
        runner: Runner,
        *,
        platform_env: Sequence[tuple[str, str]],
        platform_api: tuple[int, int],
        build_config: Sequence[tuple[str, str]] = (),
        on_event: Listener = ignore,
    ) -> None:
        self._store = store
        self._runner = runner
        self._platform_env = tuple(platform_env)
        self._build_config = tuple(build_config)
        self._platform_api = platform_api
        self._on_event = on_event
        self._runs: dict[tuple[str, str, str], DetectRun] = {}
        self._batches = 0

    def detect(self, order: Sequence[Group]) -> Detected:
        try:
            members, plan = self._order(order, [], (), optional=False)
        except _Failed as failed:
            message = (
                "no group of the order passed detection; a buildpack or extension "
                "failed with an error"
                if failed.errored
                else "no group of the order passed detection"
            )
            raise DetectionError(message, errored=failed.errored) from None
        return Detected(
            buildpacks=[m for m in members if not m.element.extension],
            extensions=[m for m in members if m.element.extension],
            plan=plan,
            seconds={
                m.element.id: self._runs[_key(m.element)].seconds for m in members
            },
        )

    def _order(
        self,
        order: Sequence[Sequence[Item]],
        done: list[Member],
        following: Group,
        *,
        optional: bool,
    ) -> tuple[list[Member], list[PlanEntry]]:
        errored = False
        for group in order:
            try:
                return self._group((*group, *following), done)
            except _Failed as failed:
                errored |= failed.errored
        if optional:
            return self._group(following, done)
        raise _Failed(errored)

    def _group(
        self, group: Group, done: list[Member]
    ) -> tuple[list[Member], list[PlanEntry]]:
        done = list(done)
        for index, item in enumerate(group):
            rest = tuple(group[index + 1 :])
            if isinstance(item, ExtensionsOrder):
                return self._order(item.order, done, rest, optional=True)
            if any(
                m.element.kind == item.kind and m.element.id == item.id for m in done
            ):
                continue
            component = self._store.lookup(item)
            if component.order:
                self._store.check_nesting(item)
                return self._order(component.order, done, rest, optional=item.optional)
            member = Member(item, component)
            if not item.optional and not self._target_matches(component):
                self._record(
                    member,
                    DetectRun(
                        -1,
                        error=f"{component.kind} {item} supports no target matching "
                        f"this build image ({self._runner.target})",
                    ),
                )
            done.append(member)
        self._run_missing(done)
        return self._resolve(done)

    def _target_matches(self, component: Component) -> bool:
        if self._platform_api < TARGETS_API or not component.targets:
            return True
        return any(target_matches(t, self._runner.target) for t in component.targets)

    def _run_missing(self, done: list[Member]) -> None:
        missing = [m for m in done if _key(m.element) not in self._runs]
        if not missing:
            return
        self._batches += 1
        batch = self._runner.batch(f"detect-{self._batches}")
        jobs: dict[str, Member] = {}
        for number, member in enumerate(missing):
            component = member.component
            if component.kind == EXTENSION and not component.has_detect:
                self._record(member, _static_plan(component))
                continue
            name = f"j{number}"
            jobs[name] = member
            batch.jobs.append(self._job(name, component, batch))
            batch.files[f"{name}.plan"] = b""
        if not jobs:
            return
        clock = JobClock(self._on_event, "detect", jobs)
        results = self._runner.run(batch, parallel=True, on_job=clock)
        for name, member in jobs.items():
            outcome = read_outcome(results, name)
            output = _joined(outcome.stdout, outcome.stderr)
            run = DetectRun(outcome.code, output)
            if outcome.code == DETECT_PASS:
                run = _read_plan(results / f"{name}.plan", member.component, output)
            self._record(member, dataclasses.replace(run, seconds=clock.seconds(name)))

    def _record(self, member: Member, run: DetectRun) -> None:
        self._runs[_key(member.element)] = run
        element = member.element
        word = verdict(member, run)
        why = run.error or ""
        if word == "error" and not why:
            why = exit_text(run.code)
        self._on_event(
            RunFinished(
                "detect",
                element.kind,
                element.id,
                member.version,
                word,
                run.seconds,
                tuple(_lines(run.output)),
                why,
            )
        )

    def _job(self, name: str, component: Component, batch: Batch) -> Job:
        # TODO: stacks and mixins of old buildpack APIs and the exec-env of
        # platform API 0.15 are not checked: imgext starts where image
        # extensions did (platform API 0.10, buildpack API 0.9), and no
        # buildpack of the test builders uses them.
        plan = batch.at(f"{name}.plan")
        dir_variable = (
            "CNB_EXTENSION_DIR" if component.kind == EXTENSION else "CNB_BUILDPACK_DIR"
        )
        env = [(dir_variable, component.root)]
        # Buildpack API 0.8 brought these two; older buildpacks get the same
        # values as arguments only, as from the lifecycle.
        if _api(component.api) >= PATH_VARIABLES_API:
            env += [
                ("CNB_PLATFORM_DIR", self._runner.platform),
                ("CNB_BUILD_PLAN_PATH", plan),
            ]
        env += self._runner.target.env()
        return Job(
            name=name,
            executable=f"{component.root}/bin/detect",
            args=(self._runner.platform, plan),
            env=tuple(env),
            platform_env=() if component.clear_env else self._platform_env,
            # The operator's variables apply even to clear-env components.
            build_config=self._build_config,
        )

    def _resolve(self, done: list[Member]) -> tuple[list[Member], list[PlanEntry]]:
        passed: list[tuple[Member, DetectRun]] = []
        detected = True
        any_buildpack = False
        errored = False
        for member in done:
            run = self._runs[_key(member.element)]
            element = member.element
            _log_run(member, run)
            if run.code == DETECT_PASS:
                passed.append((member, run))
                any_buildpack |= not element.extension
            else:
                errored |= run.code != DETECT_FAIL
                detected &= element.optional
        if not detected:
            raise _Failed(errored)
        if not any_buildpack:
            log.debug("fail: no buildpack of the group passed", extra=_PHASE)
            raise _Failed()
        last: _Failed = _Failed()
        for trial in itertools.product(*(_options(m, r) for m, r in passed)):
            try:
                chosen, plan = _trial(list(trial))
            except _Failed as failed:
                last = failed
                continue
            if len(chosen) != len(done):
                log.info(
                    "%d of %d buildpacks and extensions participating",
                    len(chosen),
                    len(done),
                    extra=_PHASE,
                )
            # The group, one line each, as the lifecycle logs it; displays show
            # it as their summary, so only at debug here.
            for member in chosen:
                log.debug(
                    "%s %s", member.element.id, member.component.version, extra=_PHASE
                )
            return chosen, plan
        raise last


def _api(text: str) -> tuple[int, int]:
    """A descriptor's `api`; one that is missing or unreadable counts as the
    newest, which gives an executable every variable."""
    major, _, minor = text.partition(".")
    if not major.isdigit() or not (minor or "0").isdigit():
        return (999, 0)
    return int(major), int(minor or "0")


def _key(element: Element) -> tuple[str, str, str]:
    return (element.kind, element.id, element.version)


def _static_plan(component: Component) -> DetectRun:
    """An extension without bin/detect passes with `detect/plan.toml`, if any."""
    path = component.local / "detect" / "plan.toml"
    if not path.is_file():
        return DetectRun(DETECT_PASS)
    return _read_plan(path, component, "")


def _read_plan(path: Path, component: Component, output: str) -> DetectRun:
    """Read and check the plan a detect wrote; a bad plan is a detect error."""
    where = f"{component.kind} {component.id}, {path.name}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return DetectRun(-1, output, f"{where}: cannot read the plan: {exc}")
    try:
        alternatives = [_sections(data, where)]
        alternatives += [_sections(o, f"{where} [[or]]") for o in _tables(data, "or")]
    except ValueError as exc:
        return DetectRun(-1, output, str(exc))
    if component.kind == EXTENSION and any(a.requires for a in alternatives):
        return DetectRun(
            -1,
            output,
            f'extension {component.id} outputs "requires", which extensions may '
            "not: they only provide",
        )
    for alternative in alternatives:
        for require in alternative.requires:
            metadata = require.get("metadata") or {}
            if "version" in require and "version" in metadata:
                return DetectRun(
                    -1,
                    output,
                    f'{where}: requirement {require["name"]!r} has both "version" '
                    'and "metadata.version"; use "metadata.version" only',
                )
            if "version" in require:
                log.warning(
                    '%s: requirement %r has a "version" key, deprecated since '
                    'buildpack API 0.3; use "metadata.version"',
                    where,
                    require["name"],
                    extra=_PHASE,
                )
    return DetectRun(DETECT_PASS, output, None, tuple(alternatives))


def _tables(data: Any, key: str) -> list[dict[str, Any]]:
    entries = data.get(key, []) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"[[{key}]] must be an array of tables")
    return entries


def _sections(data: dict[str, Any], where: str) -> Sections:
    try:
        requires = _tables(data, "requires")
        provides = _tables(data, "provides")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    for entry in [*requires, *provides]:
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"{where}: every requires and provides needs a name")
        if not isinstance(entry.get("metadata", {}), dict):
            raise ValueError(f"{where}: metadata of {entry['name']!r} is not a table")
    return Sections(tuple(requires), tuple(p["name"] for p in provides))


def _options(member: Member, run: DetectRun) -> list[tuple[Member, Sections]]:
    """The alternatives of one member; only its last one may drop it if optional."""
    options = []
    last = len(run.alternatives) - 1
    for index, sections in enumerate(run.alternatives):
        element = member.element
        if element.optional and index != last:
            element = Element(element.id, element.version, False, element.extension)
        options.append((Member(element, member.component), sections))
    return options


@dataclass
class _Dependency:
    providers: list[Member] = field(default_factory=list)
    requires: list[dict[str, Any]] = field(default_factory=list)
    early_requires: list[Member] = field(default_factory=list)
    extra_provides: list[Member] = field(default_factory=list)


def _dependencies(trial: list[tuple[Member, Sections]]) -> dict[str, _Dependency]:
    """Match requires against provides in group order.

    A provision counts for the requirements after it; a requirement before any
    provision is unmet, and a provision no later member requires is unused.
    """
    deps: dict[str, _Dependency] = {}
    for member, sections in trial:
        for name in sections.provides:
            deps.setdefault(name, _Dependency()).extra_provides.append(member)
        for require in sections.requires:
            dep = deps.setdefault(require["name"], _Dependency())
            dep.providers += dep.extra_provides
            dep.extra_provides = []
            if dep.providers:
                dep.requires.append(require)
            else:
                dep.early_requires.append(member)
    return deps


def _trial(
    trial: list[tuple[Member, Sections]],
) -> tuple[list[Member], list[PlanEntry]]:
    while True:
        deps = _dependencies(trial)
        spoilers = [
            (member, name, "requires")
            for name, dep in deps.items()
            for member in dep.early_requires
        ] + [
            (member, name, "provides unused")
            for name, dep in deps.items()
            for member in dep.extra_provides
        ]
        if not spoilers:
            break
        for member, name, why in spoilers:
            if not member.element.optional:
                log.debug("fail: %s %s %s", member.element, why, name, extra=_PHASE)
                raise _Failed()
            log.debug("skip: %s %s %s", member.element, why, name, extra=_PHASE)
            trial = [(m, s) for m, s in trial if not m.same(member)]
    if not trial:
        raise _Failed()
    plan = [
        PlanEntry(name, list(dep.providers), list(dep.requires))
        for name, dep in deps.items()
    ]
    return [m for m, _ in trial], plan


def target_matches(wanted: dict[str, Any], target: Any) -> bool:
    """Whether a descriptor's `[[targets]]` entry admits `target`."""
    for key, have in (
        ("os", target.os),
        ("arch", target.arch),
        ("variant", target.arch_variant),
    ):
        if wanted.get(key) and have and wanted[key] != have:
            return False
    distros = wanted.get("distros") or []
    if distros and target.distro_name:
        return any(
            d.get("name") == target.distro_name
            and (not d.get("version") or d.get("version") == target.distro_version)
            for d in distros
            if isinstance(d, dict)
        )
    return True


class JobClock:
    """Turns a batch's job markers into run events, timing each job."""

    def __init__(self, on_event: Listener, phase: str, jobs: dict[str, Member]) -> None:
        self._on_event = on_event
        self._phase = phase
        self._jobs = jobs
        self._started: dict[str, float] = {}
        self._seconds: dict[str, float] = {}

    def __call__(self, job: str, code: int | None) -> None:
        member = self._jobs.get(job)
        if member is None:
            return
        element = member.element
        version = member.version
        if code is None:
            self._started[job] = time.monotonic()
            self._on_event(RunStarted(self._phase, element.kind, element.id, version))
            return
        began = self._started.get(job)
        if began is None:
            return
        seconds = self._seconds[job] = time.monotonic() - began
        self._on_event(
            RunEnded(self._phase, element.kind, element.id, version, code, seconds)
        )

    def seconds(self, job: str) -> float | None:
        return self._seconds.get(job)


def verdict(member: Member, run: DetectRun) -> str:
    """pass, fail, skip (an optional member failed) or error, as the lifecycle
    words it."""
    if run.code == DETECT_PASS:
        return "pass"
    if run.code == DETECT_FAIL:
        return "skip" if member.element.optional else "fail"
    return "error"


def _log_run(member: Member, run: DetectRun) -> None:
    word = verdict(member, run)
    level = logging.WARNING if word == "error" else logging.DEBUG
    if word == "error":
        word = f"err ({run.code})" if run.code != -1 else "err"
    log.log(level, "%s: %s", word, member.element, extra=_PHASE)
    # The output goes with the run's event too, which displays show for an
    # error: here only at debug, so that it is not shown twice.
    for line in _lines(run.output):
        log.debug("  | %s", line, extra=_PHASE)
    if run.error:
        log.log(level, "  %s", run.error, extra=_PHASE)


def _lines(text: str) -> Iterator[str]:
    yield from (line for line in text.splitlines() if line.strip())


def _joined(stdout: str, stderr: str) -> str:
    return "\n".join(part for part in (stdout.rstrip(), stderr.rstrip()) if part)
