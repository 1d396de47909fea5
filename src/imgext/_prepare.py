"""Detect and generate together, as `imgext detect` and the one-command path run
them: extensions and buildpacks from host folders or from a builder image."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _log
from ._daemon import Builder, Daemon
from ._detect import Detected, Detector, Store, read_order
from ._errors import UsageError
from ._events import Listener, ignore
from ._generate import (
    Output,
    RunImage,
    generate,
    read_run_images,
    select_run_image,
    update_analyzed,
    write_generated,
    write_toml,
)
from ._generated import load_toml, parse_platform_api
from ._report import DetectReport, MemberReport
from ._runner import ContainerRunner, HostRunner, Runner, Target, host_target

log = logging.getLogger("imgext")

BUILDER_EXTENSIONS = "/cnb/extensions"
BUILDER_BUILDPACKS = "/cnb/buildpacks"
BUILDER_ORDER = "/cnb/order.toml"
BUILDER_RUN = "/cnb/run.toml"
BUILDER_BUILD_CONFIG = "/cnb/build-config"


@dataclass(frozen=True)
class PrepareOptions:
    """Inputs of detect and generate; paths default as in the lifecycle."""

    app: Path
    layers: Path
    builder: str | None = None
    extensions: Path | None = None
    buildpacks: Path | None = None
    order: Path | None = None
    platform: Path | None = None
    # The operator's build config; its env/ is applied after the platform's.
    build_config: Path | None = None
    generated: Path | None = None
    analyzed: Path | None = None
    group: Path | None = None
    plan: Path | None = None
    run: Path | None = None
    platform_api: str = "0.13"
    network: str | None = None
    # The one-command path starts analyzed.toml afresh from these two images
    # (the run image defaulting to the first of run.toml) instead of reading it.
    build_image: str | None = None
    run_image: str | None = None


@dataclass
class Prepared:
    """What detect and generate decided and wrote."""

    detected: Detected
    outputs: list[Output]
    run_image: RunImage
    analyzed: dict[str, Any]
    run_images: list[str] | None
    seconds: float

    def report(self, layers: Path) -> DetectReport:
        detected = self.detected
        report = DetectReport(str(layers), seconds=self.seconds)
        for member in detected.buildpacks:
            report.buildpacks.append(
                MemberReport(
                    member.element.id,
                    member.component.version,
                    detected.seconds.get(member.element.id),
                )
            )
        outputs = {output.extension: output for output in self.outputs}
        for member in detected.extensions:
            output = outputs.get(member.element.id)
            report.extensions.append(
                MemberReport(
                    member.element.id,
                    member.component.version,
                    detected.seconds.get(member.element.id),
                    output.seconds if output else None,
                    [str(kind) for kind in output.dockerfiles] if output else [],
                    bool(output and output.ignore_run),
                )
            )
        run = self.analyzed.get("run-image")
        if isinstance(run, dict):
            report.run_image = run.get("image") or run.get("reference")
            report.extend_run = bool(run.get("extend"))
        return report


def prepare(
    options: PrepareOptions,
    *,
    daemon: Daemon | None = None,
    on_event: Listener = ignore,
) -> Prepared:
    """Run detect, then generate, and write every file the lifecycle would.

    `on_event` hears of each bin/detect and bin/generate as it starts and ends.
    """
    began = time.monotonic()
    api = parse_platform_api(options.platform_api)
    if not options.app.is_dir():
        raise UsageError(f"app folder not found: {options.app}")
    platform = options.platform
    if platform is not None and not platform.is_dir():
        log.debug("no platform folder at %s", platform, extra={"phase": "detect"})
        platform = None
    analyzed_path = options.analyzed or options.layers / "analyzed.toml"
    fresh = options.build_image is not None
    analyzed: dict[str, Any] = {}
    if options.build_image:
        analyzed["build-image"] = {"reference": options.build_image}
    elif analyzed_path.exists():
        analyzed = load_toml(analyzed_path, "analyzed file")
    with _runner(options, platform, target_of(analyzed), daemon) as runner:
        sources = _sources(options, runner)
        run_images = read_run_images(sources.run)
        if fresh:
            analyzed["run-image"] = _run_image(options.run_image, run_images)
        store = Store(sources.extensions, sources.buildpacks, runner)
        env = platform_env(platform)
        config = env_files(sources.build_config / "env")
        if config:
            log.debug(
                "build config: %s",
                ", ".join(name for name, _ in config),
                extra={"phase": "detect"},
            )
        detector = Detector(
            store,
            runner,
            platform_env=env,
            platform_api=api,
            build_config=config,
            on_event=on_event,
        )
        detected = detector.detect(read_order(sources.order))
        outputs, remaining = generate(
            detected.extensions,
            detected.plan,
            runner,
            platform_env=env,
            build_config=config,
            on_event=on_event,
        )
        choice = select_run_image(outputs)
        new_analyzed = update_analyzed(
            analyzed, choice, platform_api=api, known_run_images=run_images
        )
        # Nothing is written until both phases are through: a failure or
        # Ctrl-C leaves the layers folder as it was. The generated outputs are
        # copied out before the runner's scratch space goes.
        layers = options.layers
        layers.mkdir(parents=True, exist_ok=True)
        write_generated(
            outputs, options.generated or layers / "generated", platform_api=api
        )
    write_toml(options.group or layers / "group.toml", detected.group_toml())
    # The plan left for buildpacks: what the extensions met is taken out.
    detected.plan = remaining
    write_toml(options.plan or layers / "plan.toml", detected.plan_toml())
    write_toml(analyzed_path, new_analyzed)
    seconds = time.monotonic() - began
    log.debug(
        "detect and generate done in %.2fs: %d buildpack(s), %d extension(s)",
        seconds,
        len(detected.buildpacks),
        len(detected.extensions),
        extra={"phase": "generate"},
    )
    return Prepared(detected, outputs, choice, new_analyzed, run_images, seconds)


def _runner(
    options: PrepareOptions,
    platform: Path | None,
    target: Target | None,
    daemon: Daemon | None,
) -> Runner:
    """A container of the builder, else the host; the target of analyzed.toml's
    run image, if any, wins over the builder's own, as in the lifecycle."""
    runner: Runner
    if options.builder:
        runner = ContainerRunner(
            daemon or Daemon.connect(),
            options.builder,
            options.app,
            platform,
            mirror=[
                BUILDER_EXTENSIONS,
                BUILDER_BUILDPACKS,
                BUILDER_ORDER,
                BUILDER_RUN,
                f"{BUILDER_BUILD_CONFIG}/env/",
            ],
            network=options.network,
        )
    else:
        runner = HostRunner(options.app, platform, target or host_target())
    if target is not None:
        runner.target = target
    return runner


def _run_image(given: str | None, known: list[str] | None) -> dict[str, str]:
    image = given or (known[0] if known else None)
    if image is None:
        raise UsageError(
            "no run image: pass --run-image, or use a builder whose "
            f"{BUILDER_RUN} lists one"
        )
    return {"reference": image, "image": image}


@dataclass(frozen=True)
class Sources:
    """What detection reads, as local paths."""

    extensions: Path | None
    buildpacks: Path | None
    order: Path
    run: Path | None
    build_config: Path


def _sources(options: PrepareOptions, runner: Runner) -> Sources:
    """From the builder's mirror when in a builder, else host paths."""
    if isinstance(runner, ContainerRunner):
        mirror = runner.mirrored
        order = options.order or mirror / BUILDER_ORDER.lstrip("/")
        if not order.is_file():
            raise UsageError(f"builder {options.builder} has no {BUILDER_ORDER}")
        return Sources(
            mirror / BUILDER_EXTENSIONS.lstrip("/"),
            mirror / BUILDER_BUILDPACKS.lstrip("/"),
            order,
            options.run or mirror / BUILDER_RUN.lstrip("/"),
            options.build_config or mirror / BUILDER_BUILD_CONFIG.lstrip("/"),
        )
    in_layers = options.layers / "order.toml"
    default_order = in_layers if in_layers.is_file() else Path(BUILDER_ORDER)
    return Sources(
        options.extensions or Path(BUILDER_EXTENSIONS),
        options.buildpacks or Path(BUILDER_BUILDPACKS),
        options.order or default_order,
        options.run or Path(BUILDER_RUN),
        options.build_config or Path(BUILDER_BUILD_CONFIG),
    )


def platform_env(platform: Path | None) -> list[tuple[str, str]]:
    """`<platform>/env/<NAME>` files as variables, the file's content the value."""
    return env_files(platform / "env") if platform else []


def env_files(folder: Path) -> list[tuple[str, str]]:
    """The files of an env folder, by name, sorted as the lifecycle reads them."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            found.append((path.name, path.read_text(encoding="utf-8")))
    return found


def target_of(analyzed: dict[str, Any]) -> Target | None:
    """`[run-image.target]` of analyzed.toml, which the lifecycle prefers."""
    run = analyzed.get("run-image")
    target = run.get("target") if isinstance(run, dict) else None
    if not isinstance(target, dict) or not target.get("os"):
        return None
    distro = target.get("distro") if isinstance(target.get("distro"), dict) else {}
    assert isinstance(distro, dict)
    return Target(
        os=str(target.get("os", "")),
        arch=str(target.get("arch", "")),
        arch_variant=str(target.get("arch-variant", "")),
        distro_name=str(distro.get("name", "")),
        distro_version=str(distro.get("version", "")),
    )


ENGINES = frozenset(b.value for b in Builder)


def add_source_arguments(parser: argparse.ArgumentParser, *, env: bool) -> None:
    """Where extensions and buildpacks come from, when not from a builder image.

    For `detect` (`env`) they default as in the lifecycle; for `extend`, giving
    --extensions runs detect and generate on these host folders first.
    """

    def default(name: str) -> str | None:
        return os.environ.get(name) or None if env else None

    def described(what: str, fallback: str, variable: str) -> str:
        if env:
            return f"{what} (default {fallback}) [{variable}]"
        return f"{what} for detect and generate on the host (default {fallback})"

    parser.add_argument(
        "--extensions",
        type=Path,
        default=default("CNB_EXTENSIONS_DIR"),
        help=described("extensions folder", "/cnb/extensions", "CNB_EXTENSIONS_DIR")
        + ("" if env else "; giving it runs them before extending"),
    )
    parser.add_argument(
        "--buildpacks",
        type=Path,
        default=default("CNB_BUILDPACKS_DIR"),
        help=described("buildpacks folder", "/cnb/buildpacks", "CNB_BUILDPACKS_DIR"),
    )
    parser.add_argument(
        "--order",
        type=Path,
        default=default("CNB_ORDER_PATH"),
        help=described(
            "order.toml",
            "<layers>/order.toml, else the builder's or /cnb/order.toml",
            "CNB_ORDER_PATH",
        ),
    )
    parser.add_argument(
        "--build-config",
        type=Path,
        default=os.environ.get("CNB_BUILD_CONFIG_DIR") or None,
        help="the operator's build config; its env/ gives variables to "
        "bin/detect and bin/generate after the platform's (default: the "
        "builder's /cnb/build-config, or /cnb/build-config on the host) "
        "[CNB_BUILD_CONFIG_DIR]",
    )
    parser.add_argument(
        "--platform",
        type=Path,
        default=os.environ.get("CNB_PLATFORM_DIR") or "/platform",
        help="platform folder; its env/ gives variables to bin/detect and "
        "bin/generate (default /platform) [CNB_PLATFORM_DIR]",
    )


def add_detect_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "detect",
        help="run the extensions' detect and generate, as the lifecycle does",
        description="Resolve the order with each buildpack's and extension's "
        "bin/detect, run the extensions' bin/generate, and write group.toml, "
        "plan.toml, the generated folder and analyzed.toml for `imgext extend`. "
        "With --builder IMAGE the executables run inside a container of that "
        "builder, as its CNB user; otherwise on this host.",
    )

    def env(name: str, default: str | None = None) -> str | None:
        return os.environ.get(name) or default

    parser.add_argument(
        "--app",
        type=Path,
        default=env("CNB_APP_DIR", "."),
        help="app folder (default .) [CNB_APP_DIR]",
    )
    parser.add_argument(
        "--layers",
        type=Path,
        default=env("CNB_LAYERS_DIR"),
        help="layers folder [CNB_LAYERS_DIR]",
    )
    parser.add_argument(
        "--builder",
        metavar="IMAGE",
        help="builder image whose /cnb/extensions, /cnb/buildpacks and "
        "/cnb/order.toml to use, run in a container of it",
    )
    add_source_arguments(parser, env=True)
    for flag, variable, what in (
        (
            "--generated",
            "CNB_GENERATED_DIR",
            "generated folder (default <layers>/generated)",
        ),
        (
            "--analyzed",
            "CNB_ANALYZED_PATH",
            "analyzed.toml (default <layers>/analyzed.toml)",
        ),
        ("--group", "CNB_GROUP_PATH", "group.toml (default <layers>/group.toml)"),
        ("--plan", "CNB_PLAN_PATH", "plan.toml (default <layers>/plan.toml)"),
        ("--run", "CNB_RUN_PATH", "run.toml (default /cnb/run.toml)"),
    ):
        parser.add_argument(
            flag, type=Path, default=env(variable), help=f"{what} [{variable}]"
        )
    parser.add_argument(
        "--platform-api",
        default=env("CNB_PLATFORM_API", "0.13"),
        help="platform API; 0.10 to 0.12 write the older generated layout "
        "(default 0.13) [CNB_PLATFORM_API]",
    )
    parser.add_argument(
        "--network",
        help="network mode of the builder container (default none: bin/detect "
        "and bin/generate get no network)",
    )
    parser.add_argument(
        "--report", type=Path, help="write what was detected here, as JSON"
    )
    parser.add_argument(
        "--log-level",
        choices=list(_log.LEVELS),
        default=env("CNB_LOG_LEVEL", "info"),
        help="(default info) [CNB_LOG_LEVEL]",
    )
    return parser


def detect_options(args: argparse.Namespace) -> PrepareOptions:
    """`imgext detect`'s arguments as detect and generate take them."""
    if args.layers is None:
        raise UsageError("--layers is required (or set CNB_LAYERS_DIR)")
    return PrepareOptions(
        **_shared_options(args), builder=args.builder, plan=args.plan, run=args.run
    )


def _shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options `imgext detect` and `imgext extend` both take."""
    return {
        "app": args.app,
        "layers": args.layers,
        "extensions": args.extensions,
        "buildpacks": args.buildpacks,
        "order": args.order,
        "platform": args.platform,
        "build_config": args.build_config,
        "generated": args.generated,
        "analyzed": args.analyzed,
        "group": args.group,
        "platform_api": args.platform_api,
        "network": args.network,
    }


@contextlib.contextmanager
def one_command(
    args: argparse.Namespace, on_event: Listener = ignore
) -> Iterator[Prepared | None]:
    """`imgext extend --builder IMAGE`: detect and generate first.

    The layers go to a temporary folder unless --layers is given; `args` is
    changed so that extend then reads what generate wrote. Yields what detect
    and generate did, or None when extend alone was asked for.
    """
    builder = args.builder
    if builder in ENGINES and args.extensions is None:
        yield None
        return
    image = None if builder in ENGINES else builder
    temporary = None
    if args.layers is None:
        temporary = Path(tempfile.mkdtemp(prefix="imgext-layers-"))
        args.layers = temporary
    try:
        prepared = prepare(
            PrepareOptions(
                **_shared_options(args),
                builder=image,
                build_image=args.build_image or image or "",
                run_image=args.run_image,
            ),
            on_event=on_event,
        )
        # Extend takes both images from analyzed.toml now, which holds the run
        # image that generate chose.
        args.run_image = None
        args.build_image = args.build_image or image
        if image is not None:
            # The value named a builder image; the daemon's builder is chosen
            # as by default. With --extensions it still names the engine.
            args.builder = Builder.AUTO.value
        yield prepared
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
