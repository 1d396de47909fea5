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

from . import __version__, _log
from ._daemon import Builder
from ._dockerfile import Kind
from ._errors import ExitCode, ImgextError, StepFailedError, UsageError
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
    return parser


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
        choices=[b.value for b in Builder],
        default="auto",
        help="BuildKit, the classic builder, or BuildKit when offered (default auto)",
    )
    parser.add_argument("--report", type=path, help="write a JSON report here")
    parser.add_argument(
        "--log-level",
        choices=list(_log.LEVELS),
        default=_env("CNB_LOG_LEVEL", "info"),
        help="(default info) [CNB_LOG_LEVEL]",
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
    )


def _run_extend(args: argparse.Namespace) -> int:
    options = extend_options(args)
    report = extend(options)
    if args.report:
        write_atomically(args.report, report.to_json())
    _print_summary(report)
    return ExitCode.OK


def _print_summary(report: Report) -> None:
    for kind, image in (("build", report.build), ("run", report.run)):
        if image is None:
            print(f"{kind}: nothing to apply")
            continue
        extra = f", rebasable {str(image.rebasable).lower()}" if kind == "run" else ""
        print(
            f"{kind}: {image.tag} ({image.image[:19]}) from {image.base}, "
            f"{len(image.steps)} Dockerfile(s), user {image.user or 'root'}{extra}"
        )
    print(f"done in {report.seconds:.1f}s with the {report.builder or 'no'} builder")


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
        raise UsageError(f"unknown command {args.command}")
    except ImgextError as exc:
        _print_error(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("imgext: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _print_error(exc: ImgextError) -> None:
    print(f"imgext: error: {exc.message}", file=sys.stderr)
    if isinstance(exc, StepFailedError) and exc.output:
        print("  output of the failing step (last lines):", file=sys.stderr)
        for line in exc.output:
            print(f"  | {line}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)
