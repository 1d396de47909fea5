"""The `imgext` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from . import __version__, _doctor, _inspect, _log, _prepare, _progress, _publish
from ._daemon import Builder, Daemon
from ._dockerfile import Kind
from ._errors import ExitCode, ImgextError, Interrupted, UsageError
from ._extend import ExtendOptions, extend
from ._report import Report, write_atomically


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with the lifecycle's code for invalid arguments."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imgext",
        description="Extend buildpacks base images with Dockerfiles through the "
        "Docker daemon.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser
    )
    extend_parser = commands.add_parser(
        "extend",
        help="apply the generated Dockerfiles to the build and run images",
        description="Apply every generated build Dockerfile to the build image and "
        "every run Dockerfile to the run image, through the daemon. Each default "
        "can also be set with the CNB_* variable named in brackets.",
    )
    add_extend_arguments(extend_parser)
    add_output_arguments(extend_parser)
    _prepare.add_source_arguments(extend_parser, env=False)
    detect_parser = _prepare.add_detect_parser(commands)
    add_output_arguments(detect_parser)
    add_publish_parser(commands)
    add_inspect_parser(commands)
    add_doctor_parser(commands)
    return parser


def add_doctor_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check the daemon, BuildKit, base images, disk and registry",
        description="Check what imgext needs and say what is wrong: the daemon "
        "and its API version, BuildKit, DOCKER_HOST or the Docker context, the "
        "base images, free disk, and a registry when given one. Exits non-zero "
        "when a check fails.",
    )
    parser.add_argument(
        "--layers",
        type=Path,
        default=_env("CNB_LAYERS_DIR"),
        help="check the base images its analyzed.toml names [CNB_LAYERS_DIR]",
    )
    parser.add_argument("--build-image", help="check this build image")
    parser.add_argument("--run-image", help="check this run image")
    parser.add_argument(
        "--registry", metavar="HOST", help="check that HOST is reachable and logged in"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    _add_log_level(parser)


def add_publish_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "publish",
        help="push extended images to a registry through the daemon",
        description="Push extended images through the daemon, with the "
        "credentials of the Docker config. Each kind's image (default: the one "
        "its first tag names) is pushed to every tag given for it.",
    )
    for kind in ("build", "run"):
        parser.add_argument(
            f"--{kind}-tag",
            nargs="+",
            default=[],
            metavar="REF",
            help=f"push the extended {kind} image as these references",
        )
        parser.add_argument(
            f"--{kind}-image", help=f"the {kind} image to push (default: its first tag)"
        )
    parser.add_argument("--report", type=Path, help="write the digests here as JSON")
    _add_log_level(parser)


def add_inspect_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "inspect",
        help="show what an extended run image holds",
        description="Show the base, the top layer, the layers each extension "
        "added, whether it is rebasable and its user, from an extended run "
        "image's OCI layout (or the directory above it) or an image in the daemon.",
    )
    parser.add_argument("target", help="layout directory, extended directory, or image")
    parser.add_argument(
        "--base", help="for an image in the daemon: its base, to tell layers apart"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    _add_log_level(parser)


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=list(_log.LEVELS),
        default=_env("CNB_LOG_LEVEL", "info"),
        help="(default info) [CNB_LOG_LEVEL]",
    )


def add_extend_arguments(parser: argparse.ArgumentParser) -> None:
    path = Path
    parser.add_argument(
        "--layers",
        type=path,
        default=_env("CNB_LAYERS_DIR"),
        help="layers directory [CNB_LAYERS_DIR]",
    )
    parser.add_argument(
        "--generated",
        type=path,
        default=_env("CNB_GENERATED_DIR"),
        help="generated directory (default <layers>/generated) [CNB_GENERATED_DIR]",
    )
    parser.add_argument(
        "--analyzed",
        type=path,
        default=_env("CNB_ANALYZED_PATH"),
        help="analyzed.toml (default <layers>/analyzed.toml) [CNB_ANALYZED_PATH]",
    )
    parser.add_argument(
        "--group",
        type=path,
        default=_env("CNB_GROUP_PATH"),
        help="group.toml (default <layers>/group.toml) [CNB_GROUP_PATH]",
    )
    parser.add_argument(
        "--app",
        type=path,
        default=_env("CNB_APP_DIR", "."),
        help="app directory, the build context when an extension has none "
        "(default .) [CNB_APP_DIR]",
    )
    parser.add_argument(
        "--platform-api",
        default=_env("CNB_PLATFORM_API", "0.13"),
        help="platform API; 0.10 to 0.12 read the older generated layout "
        "(default 0.13) [CNB_PLATFORM_API]",
    )
    parser.add_argument(
        "--kind",
        choices=["build", "run", "all"],
        default="all",
        help="which images to extend (default all)",
    )
    parser.add_argument(
        "--build-image",
        default=_env("CNB_BUILD_IMAGE"),
        help="build image (default: analyzed.toml [build-image]) [CNB_BUILD_IMAGE]",
    )
    parser.add_argument(
        "--run-image",
        default=_env("CNB_RUN_IMAGE"),
        help="run image (default: analyzed.toml [run-image]) [CNB_RUN_IMAGE]",
    )
    parser.add_argument(
        "--build-tag",
        help="tag for the extended build image (default <build image>-extended)",
    )
    parser.add_argument(
        "--run-tag",
        help="tag for the extended run image (default <run image>-extended)",
    )
    parser.add_argument("--network", help="network mode for RUN steps")
    parser.add_argument(
        "--no-cache", action="store_true", help="do not use the daemon's cache"
    )
    parser.add_argument(
        "--builder",
        default="auto",
        metavar="auto|buildkit|classic|IMAGE",
        help="BuildKit, the classic builder, or BuildKit when offered (default "
        "auto); any other value is a builder image: detect and generate run in it "
        "first, then both images are extended",
    )
    parser.add_argument("--report", type=path, help="write a JSON report here")
    parser.add_argument(
        "--extended",
        type=path,
        default=_env("CNB_EXTENDED_DIR"),
        help="where the extended run image's sparse OCI layout goes "
        "(default <layers>/extended) [CNB_EXTENDED_DIR]",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="push the extended images to their tags' registries afterwards",
    )
    parser.add_argument(
        "--log-level",
        choices=list(_log.LEVELS),
        default=_env("CNB_LOG_LEVEL", "info"),
        help="(default info) [CNB_LOG_LEVEL]",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """How progress is shown: live on a terminal, else plain lines."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quiet",
        action="store_true",
        help="show no progress, only warnings and errors",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line for each event, the report last",
    )


def extend_options(args: argparse.Namespace) -> ExtendOptions:
    if args.layers is None:
        raise UsageError("--layers is required (or set CNB_LAYERS_DIR)")
    kinds = (Kind.BUILD, Kind.RUN) if args.kind == "all" else (Kind(args.kind),)
    return ExtendOptions(
        layers=args.layers,
        generated=args.generated,
        analyzed=args.analyzed,
        group=args.group,
        app=args.app,
        platform_api=args.platform_api,
        kinds=kinds,
        build_image=args.build_image,
        run_image=args.run_image,
        build_tag=args.build_tag,
        run_tag=args.run_tag,
        network=args.network,
        no_cache=args.no_cache,
        builder=Builder(args.builder),
        extended=args.extended,
    )


def _run_extend(args: argparse.Namespace) -> int:
    display = _progress.choose(json_output=args.json, quiet=args.quiet)
    with display, _progress.routed_logs(display):
        try:
            # The one-command path's detect and generate show in the same
            # display, before the builds.
            with _prepare.one_command(args, on_event=display) as prepared:
                if prepared is not None:
                    display.detected(prepared.report(args.layers), final=False)
                report = extend(extend_options(args), on_event=display)
                if args.publish:
                    _publish.publish_report(Daemon.connect(), report)
        except KeyboardInterrupt:
            # Ctrl-C during detect and generate: the builder container is gone
            # by now; the display marks what was running as stopped.
            return _interrupted(display, "interrupted: nothing was extended")
        except ImgextError as exc:
            display.error(exc)
            return int(exc.exit_code)
        if args.report:
            write_atomically(args.report, report.to_json())
        display.summary(report, _image_stats(report))
    return ExitCode.OK


def _run_detect(args: argparse.Namespace) -> int:
    options = _prepare.detect_options(args)
    display = _progress.choose(json_output=args.json, quiet=args.quiet)
    with display, _progress.routed_logs(display):
        try:
            prepared = _prepare.prepare(options, on_event=display)
        except KeyboardInterrupt:
            return _interrupted(display, "interrupted: no file was written")
        except ImgextError as exc:
            display.error(exc)
            return int(exc.exit_code)
        report = prepared.report(options.layers)
        if args.report:
            write_atomically(args.report, report.to_json())
        display.detected(report, final=True)
    return ExitCode.OK


def _interrupted(display: _progress.Display, message: str) -> int:
    error = Interrupted(message)
    display.error(error)
    return int(error.exit_code)


def _image_stats(report: Report) -> dict[str, _progress.ImageStats]:
    if report.build is None and report.run is None:
        return {}
    try:
        return _progress.image_stats(Daemon.connect(), report)
    except ImgextError:
        return {}


def _run_publish(args: argparse.Namespace) -> int:
    if not args.build_tag and not args.run_tag:
        raise UsageError("give --build-tag and/or --run-tag references to push")
    results = _publish.publish(
        Daemon.connect(),
        {
            "build": (args.build_image, args.build_tag),
            "run": (args.run_image, args.run_tag),
        },
    )
    for kind, pushed in results.items():
        for item in pushed:
            print(f"{kind}: pushed {item.ref}@{item.digest} ({item.uploaded} uploaded)")
    if args.report:
        write_atomically(args.report, _publish.to_json(results))
    return ExitCode.OK


def _run_inspect(args: argparse.Namespace) -> int:
    info = _inspect.inspect(args.target, base=args.base)
    print(info.to_json() if args.json else info.to_text(), end="")
    return ExitCode.OK


def _run_doctor(args: argparse.Namespace) -> int:
    images = [i for i in (args.build_image, args.run_image) if i]
    checks = _doctor.run(
        _doctor.default_setup(),
        images=images,
        layers=args.layers,
        registry=args.registry,
    )
    print(_doctor.to_json(checks) if args.json else _doctor.to_text(checks), end="")
    return _doctor.exit_code(checks)


def _on_terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM cleans up like Ctrl-C.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _log.configure(args.log_level)
    signal.signal(signal.SIGTERM, _on_terminate)
    try:
        if args.command == "extend":
            return _run_extend(args)
        if args.command == "detect":
            return _run_detect(args)
        if args.command == "publish":
            return _run_publish(args)
        if args.command == "inspect":
            return _run_inspect(args)
        if args.command == "doctor":
            return _run_doctor(args)
        raise UsageError(f"unknown command {args.command}")
    except ImgextError as exc:
        _print_error(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("imgext: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _print_error(exc: ImgextError) -> None:
    for line in _progress.error_lines(exc):
        prefix = "imgext: " if line.startswith("error: ") else ""
        print(f"{prefix}{line}", file=sys.stderr)
