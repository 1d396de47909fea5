"""imgext: extend Cloud Native Buildpacks base images through the Docker daemon."""

from __future__ import annotations

from ._daemon import Builder, Daemon
from ._dockerfile import Kind
from ._errors import (
    DaemonError,
    ExitCode,
    ExtensionError,
    ExtensionOutputError,
    ImageMissingError,
    ImgextError,
    Interrupted,
    RegistryError,
    StepFailedError,
    UsageError,
)
from ._extend import ExtendOptions, KindPlan, extend, plan
from ._inspect import inspect
from ._prepare import Prepared, PrepareOptions, prepare
from ._publish import publish
from ._report import DetectReport, ImageReport, MemberReport, Report, StepReport

__version__ = "0.1.0"

__all__ = [
    "Builder",
    "Daemon",
    "DaemonError",
    "DetectReport",
    "ExitCode",
    "ExtendOptions",
    "ExtensionError",
    "ExtensionOutputError",
    "ImageMissingError",
    "ImageReport",
    "ImgextError",
    "Interrupted",
    "Kind",
    "KindPlan",
    "MemberReport",
    "PrepareOptions",
    "Prepared",
    "RegistryError",
    "Report",
    "StepFailedError",
    "StepReport",
    "UsageError",
    "__version__",
    "extend",
    "inspect",
    "plan",
    "prepare",
    "publish",
]
