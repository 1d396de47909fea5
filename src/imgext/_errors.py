"""The exceptions imgext raises, each carrying the exit code the CLI returns."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; the lifecycle's numbers where it has one."""

    OK = 0
    FAILED = 1  # unexpected failure (lifecycle: CodeFailed)
    USAGE = 3  # bad command line or unreadable input file (lifecycle: 3)
    DETECT_FAILED = 20  # no group passed detection (lifecycle: 20)
    DETECT_ERRORED = 21  # ... and some bin/detect ended in an error (lifecycle: 21)
    EXTENSION_FAILED = 91  # an extension's bin/generate failed (lifecycle: 91)
    INVALID_EXTENSION_OUTPUT = 92  # lifecycle rejects such output as a generate error
    STEP_FAILED = 102  # a Dockerfile step failed (lifecycle's extend error)
    DAEMON_UNREACHABLE = 103
    IMAGE_MISSING = 104  # a base image is neither in the daemon nor pullable
    REGISTRY_FAILED = 105  # a push to a registry failed
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class ImgextError(Exception):
    """Base of every error imgext reports to its user."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ImgextError):
    """The command line or an input file of the platform is wrong."""

    exit_code = ExitCode.USAGE


class ExtensionError(ImgextError):
    """An extension's executable failed; `output` is what it printed."""

    exit_code = ExitCode.EXTENSION_FAILED

    def __init__(
        self,
        message: str,
        *,
        extension: str | None = None,
        output: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.extension = extension
        self.output = output or []


class ExtensionOutputError(ImgextError):
    """What an extension generated breaks the contract."""

    exit_code = ExitCode.INVALID_EXTENSION_OUTPUT

    def __init__(
        self,
        message: str,
        *,
        extension: str | None = None,
        path: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = _where(extension, path, line)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.extension = extension
        self.path = path
        self.line = line


class StepFailedError(ImgextError):
    """The daemon failed to apply a Dockerfile."""

    exit_code = ExitCode.STEP_FAILED

    def __init__(
        self,
        message: str,
        *,
        extension: str,
        path: str,
        instruction: str | None = None,
        line: int | None = None,
        output: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        where = _where(extension, path, line)
        text = f"{where}: {message}"
        if instruction:
            text += f"\n  failing instruction: {instruction}"
        super().__init__(text, hint=hint)
        self.extension = extension
        self.path = path
        self.instruction = instruction
        self.line = line
        self.output = output or []


class DaemonError(ImgextError):
    """The Docker daemon cannot be reached or refused a request."""

    exit_code = ExitCode.DAEMON_UNREACHABLE


class ImageMissingError(ImgextError):
    """A base image is not in the daemon and could not be pulled."""

    exit_code = ExitCode.IMAGE_MISSING


class RegistryError(ImgextError):
    """A registry refused a push or could not be reached."""

    exit_code = ExitCode.REGISTRY_FAILED


class Interrupted(ImgextError):
    """The user pressed Ctrl-C; everything of ours was cleaned up."""

    exit_code = ExitCode.INTERRUPTED


def _where(extension: str | None, path: str | None, line: int | None) -> str:
    parts = []
    if extension:
        parts.append(f"extension {extension}")
    if path:
        parts.append(f"{path}:{line}" if line else path)
    return ", ".join(parts)
