"""Stream a build context to the daemon as a tar, one chunk at a time.

docker-py's own context helper writes the whole archive to a temporary file
before sending it; here the archive is produced as it is sent, so a large app
directory is never copied to memory or disk first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from docker.utils.build import PatternMatcher

log = logging.getLogger("imgext")

CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


def dockerfile_name(source: bytes) -> str:
    """A name for the Dockerfile inside the context that is stable per content."""
    return ".imgext-" + hashlib.sha256(source).hexdigest()[:16] + ".Dockerfile"


def coalesce(chunks: Iterator[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """Join small chunks: one socket write per header costs more than the data."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def stream(context: Path, dockerfile: bytes, name: str) -> Iterator[bytes]:
    """Yield a tar of `context` plus `dockerfile` stored as `name`.

    Symlinks are archived as links, never followed. `.dockerignore` patterns of
    the context are applied here, and the Dockerfile itself is listed in the
    `.dockerignore` sent along so that `COPY . …` never copies it.
    """
    patterns = _read_ignore(context / ".dockerignore")
    matcher = PatternMatcher(patterns)
    yield from _preamble(dockerfile, name, patterns)
    # The matcher walks lazily, never into symlinked folders, and into an
    # excluded folder only when a `!` pattern may bring back something below.
    for relative in matcher.walk(str(context)):
        relative = Path(relative).as_posix()
        if relative in {name, ".dockerignore"}:
            continue
        yield from _member(context / relative, relative)
    yield b"\0" * (_BLOCK * 2)


def stream_dockerfile_only(dockerfile: bytes, name: str) -> Iterator[bytes]:
    """Yield a tar that holds nothing but the Dockerfile."""
    yield from _preamble(dockerfile, name, [])
    yield b"\0" * (_BLOCK * 2)


def _preamble(dockerfile: bytes, name: str, patterns: list[str]) -> Iterator[bytes]:
    ignore = "\n".join([*patterns, name, ".dockerignore"]).encode() + b"\n"
    for member_name, data in ((name, dockerfile), (".dockerignore", ignore)):
        yield _header(_memory_member(member_name, len(data)))
        yield data
        if len(data) % _BLOCK:
            yield b"\0" * (_BLOCK - len(data) % _BLOCK)


def _read_ignore(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _member(path: Path, relative: str) -> Iterator[bytes]:
    info = os.lstat(path)
    member = tarfile.TarInfo(relative)
    member.mode = stat.S_IMODE(info.st_mode)
    member.mtime = int(info.st_mtime)
    # The Docker CLI sends context files as owned by root; so does imgext, so
    # that both give the same layers and cache keys.
    member.uid = member.gid = 0
    if stat.S_ISLNK(info.st_mode):
        member.type = tarfile.SYMTYPE
        member.linkname = os.readlink(path)
        yield _header(member)
    elif stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
        yield _header(member)
    elif stat.S_ISREG(info.st_mode):
        member.size = info.st_size
        yield _header(member)
        yield from _file(path, info.st_size)
    else:
        log.warning(
            "build context: skipping %s, not a file, folder or symlink",
            path,
            extra={"phase": "extend"},
        )


def _file(path: Path, size: int) -> Iterator[bytes]:
    left = size
    with path.open("rb") as handle:
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{path} shrank while it was being sent")
            left -= len(chunk)
            yield chunk
    if size % _BLOCK:
        yield b"\0" * (_BLOCK - size % _BLOCK)


def _memory_member(name: str, size: int) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = size
    member.mode = 0o644
    return member


def _header(member: tarfile.TarInfo) -> bytes:
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
