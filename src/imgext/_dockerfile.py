"""Parse and validate the Dockerfiles extensions generate.

Parsing uses the `dockerfile` package, a binding of BuildKit's own parser, so a
Dockerfile means to imgext exactly what it means to the lifecycle and the daemon.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import dockerfile as buildkit_parser

from ._errors import ExtensionOutputError

log = logging.getLogger("imgext")

BASE_IMAGE_ARG = "base_image"
BASE_IMAGE_FROM = "${base_image}"
REBASABLE_LABEL = "io.buildpacks.rebasable"
ALLOWED_COMMANDS = frozenset(
    {"ADD", "ARG", "COPY", "ENV", "LABEL", "RUN", "SHELL", "USER", "WORKDIR"}
)
_PARSE_LINE = re.compile(r"line (\d+)")


class Kind(StrEnum):
    """Which base image a Dockerfile extends."""

    BUILD = "build"
    RUN = "run"


@dataclass(frozen=True)
class Instruction:
    """One instruction of a Dockerfile, as BuildKit's parser reads it."""

    command: str
    line: int
    original: str
    value: tuple[str, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Dockerfile:
    """A validated single-stage Dockerfile of one extension."""

    path: Path
    kind: Kind
    extension: str
    instructions: tuple[Instruction, ...]
    base: str
    from_line: int

    @property
    def switches(self) -> bool:
        """True when FROM names another image than the base image."""
        return self.base != BASE_IMAGE_FROM

    @property
    def extends(self) -> bool:
        """True when anything follows FROM, so the image gains layers or config."""
        return any(i.line > self.from_line for i in self.instructions)

    @property
    def reads_context(self) -> bool:
        """Whether any instruction takes files from the build context."""
        return any(
            i.command in ("ADD", "COPY")
            and not any(f.startswith("--from=") for f in i.flags)
            for i in self.instructions
        )

    def sets_label(self, key: str) -> bool:
        """Whether a LABEL instruction of this Dockerfile itself sets `key`."""
        for instruction in self.instructions:
            if instruction.command != "LABEL":
                continue
            keys = instruction.value[0::2]
            if any(_unquote(k) == key for k in keys):
                return True
        return False

    def instruction_at(self, line: int) -> Instruction | None:
        for instruction in self.instructions:
            if instruction.line == line:
                return instruction
        return None

    def find_run(self, command: str) -> Instruction | None:
        """The RUN instruction whose shell command is `command`, if any."""
        wanted = " ".join(command.split())
        for instruction in self.instructions:
            if instruction.command != "RUN":
                continue
            text = " ".join(" ".join(instruction.value).split())
            if text == wanted or (wanted and wanted in text):
                return instruction
        return None


def parse(source: str, *, path: Path, kind: Kind, extension: str) -> Dockerfile:
    """Parse and validate Dockerfile text; warnings go to the log."""
    try:
        commands = buildkit_parser.parse_string(source)
    except buildkit_parser.GoParseError as exc:
        match = _PARSE_LINE.search(str(exc))
        raise ExtensionOutputError(
            f"cannot parse {kind} Dockerfile: {exc}",
            extension=extension,
            path=str(path),
            line=int(match.group(1)) if match else None,
        ) from None
    instructions = tuple(
        Instruction(
            command=c.cmd.upper(),
            line=c.start_line,
            original=c.original,
            value=tuple(c.value),
            flags=tuple(c.flags),
        )
        for c in commands
        # A lone line continuation (`\` at the end of the file) comes back as
        # a command without a name; BuildKit has nothing to run for it either.
        if c.cmd is not None
    )
    return _validate(instructions, path=path, kind=kind, extension=extension)


def read(path: Path, *, kind: Kind, extension: str) -> Dockerfile:
    """Read, parse and validate the Dockerfile at `path`."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtensionOutputError(
            f"cannot read {kind} Dockerfile: {exc}", extension=extension, path=str(path)
        ) from None
    return parse(source, path=path, kind=kind, extension=extension)


def _validate(
    instructions: Sequence[Instruction], *, path: Path, kind: Kind, extension: str
) -> Dockerfile:
    def fail(message: str, line: int | None = None) -> ExtensionOutputError:
        return ExtensionOutputError(
            message, extension=extension, path=str(path), line=line
        )

    stages = [i for i in instructions if i.command == "FROM"]
    if not stages:
        raise fail(f"{kind} Dockerfile should have at least one stage (no FROM)")
    if len(stages) > 1:
        raise fail(
            f"{kind} Dockerfile is not permitted to use multistage build",
            stages[1].line,
        )
    stage = stages[0]
    if not stage.value:
        raise fail("FROM names no image", stage.line)
    base = stage.value[0]
    before = [i for i in instructions if i.line < stage.line]
    if kind is Kind.BUILD:
        args = [i for i in before if i.command == "ARG"]
        first_arg = _arg_name(args[0]) if args else None
        if len(before) != 1 or len(args) != 1 or first_arg != BASE_IMAGE_ARG:
            line = before[0].line if before else stage.line
            raise fail(
                "build Dockerfile did not start with required ARG command "
                f"'ARG {BASE_IMAGE_ARG}' (exactly one ARG before FROM)",
                line,
            )
        if base != BASE_IMAGE_FROM:
            raise fail(
                "build Dockerfile did not contain required "
                f"FROM {BASE_IMAGE_FROM} command",
                stage.line,
            )
    elif base == BASE_IMAGE_FROM and BASE_IMAGE_ARG not in map(_arg_name, before):
        raise fail(
            f"run Dockerfile uses FROM {BASE_IMAGE_FROM} without declaring "
            f"'ARG {BASE_IMAGE_ARG}' before it",
            stage.line,
        )
    for instruction in instructions:
        if instruction.command == "COPY" and _copies_from_stage(instruction):
            raise fail(
                "COPY --from a build stage is not permitted: Dockerfiles of "
                "extensions have a single stage",
                instruction.line,
            )
        if instruction.line > stage.line and instruction.command not in (
            ALLOWED_COMMANDS
        ):
            log.warning(
                "extension %s, %s:%d: %s is not one of the instructions "
                "extensions may use (%s); the daemon will apply it anyway",
                extension,
                path,
                instruction.line,
                instruction.command,
                ", ".join(sorted(ALLOWED_COMMANDS)),
                extra={"phase": "validate"},
            )
        elif instruction.line < stage.line and instruction.command != "ARG":
            raise fail(
                f"only ARG may come before FROM, found {instruction.command}",
                instruction.line,
            )
    return Dockerfile(
        path=path,
        kind=kind,
        extension=extension,
        instructions=tuple(instructions),
        base=base,
        from_line=stage.line,
    )


def _arg_name(instruction: Instruction) -> str:
    return instruction.value[0].split("=", 1)[0] if instruction.value else ""


def _copies_from_stage(instruction: Instruction) -> bool:
    for flag in instruction.flags:
        if flag.startswith("--from="):
            source = flag.removeprefix("--from=")
            # With a single stage, a name is an image reference; only a stage
            # index can point at a (missing) earlier stage.
            return source.isdigit()
    return False


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        return word[1:-1]
    return word
