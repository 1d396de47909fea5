"""Run extension and buildpack executables, on the host or in a builder image.

Both runners execute the same small POSIX shell driver over a *batch*: a folder
holding one script per executable, run in parallel (detect) or in order,
stopping at the first failure (generate). Each job leaves `<job>.out`,
`<job>.err` and `<job>.code` beside its script, plus whatever it wrote into
the batch. The container runner keeps a single container of the builder image
for a whole run and talks to it through the Engine API only (put_archive, exec,
get_archive), so it works against a remote daemon; no host path is mounted.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import docker.errors
import requests

from . import _context
from ._daemon import Daemon
from ._errors import DaemonError, ImgextError, UsageError

log = logging.getLogger("imgext")

# The lifecycle passes only these variables of its own environment on to
# buildpacks and extensions; the PATH-like ones take <platform>/env values as a
# prefix rather than a replacement.
INHERITED_ENV = (
    "CNB_STACK_ID",
    "HOSTNAME",
    "HOME",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
)
PATH_LIKE_ENV = ("PATH", "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "PKG_CONFIG_PATH")

# Where the container runner puts things inside the builder container; the
# first two are the lifecycle's own defaults, so extensions see familiar paths.
CONTAINER_APP = "/workspace"
CONTAINER_PLATFORM = "/platform"
CONTAINER_SCRATCH = "/imgext"

# Each job's start and end are announced on the driver's stderr as they
# happen (lines far below PIPE_BUF, so parallel jobs never interleave), which
# is what lets a display follow a batch live; its files come back at the end.
_DRIVER = """\
#!/bin/sh
# imgext batch driver: $1 is the batch folder, $2 "parallel" or "serial".
cd "$1" || exit 120
one() {
  echo "@@imgext-job start $1" >&2
  sh "./$1.sh" >"$1.out" 2>"$1.err" </dev/null
  code=$?
  echo "$code" >"$1.code"
  echo "@@imgext-job end $1 $code" >&2
  return "$code"
}
for job in $(cat jobs); do
  if [ "$2" = parallel ]; then
    one "$job" &
  else
    one "$job" || break
  fi
done
wait
"""
_MARKER = b"@@imgext-job "

# Shell functions that send files back on stdout with as few processes as
# possible (one find per tree, one wc and one cat in all), as process starts
# are what a batch mostly costs. `file`, `walk` and `exists` list entries, one
# a line: `f <path>` (a file; `x` if executable), `d <path>` (a folder),
# `e <path>` (exists), `s <tree>` (the tree holds something else: fetch it as a
# tar instead); `send` then prints `@@imgext-sizes`, wc's sizes of the files,
# `@@imgext-data` and the files' bytes, in listed order.
_FRAMING = """\
nl='
'
files=
file() {
  if [ -x "$1" ]; then printf 'x %s\\n' "$1"; else printf 'f %s\\n' "$1"; fi
  files="$files$1$nl"
}
walk() {
  [ -d "$1" ] || return 0
  while IFS= read -r path; do
    if [ -L "$path" ]; then printf 's %s\\n' "$1"
    elif [ -d "$path" ]; then printf 'd %s\\n' "$path"
    elif [ -f "$path" ]; then file "$path"
    else printf 's %s\\n' "$1"
    fi
  done <<WALK
$(find "$1")
WALK
}
send() {
  printf '@@imgext-sizes\\n'
  if [ -n "$files" ]; then
    set -f
    old=$IFS
    IFS=$nl
    set -- $files
    IFS=$old
    set +f
    wc -c -- "$@"
    printf '@@imgext-data\\n'
    cat -- "$@"
  else
    printf '@@imgext-data\\n'
  fi
}
"""

# Sends what detection reads from a builder image (descriptors, static plans
# and outputs, which executables exist), without its possibly large bin/. A
# source ending in / is a folder whose own files are sent (build-config/env).
_MIRROR = f"""\
#!/bin/sh
{_FRAMING}
for source in "$@"; do
  case $source in
  */)
    for path in "$source"*; do
      if [ -f "$path" ]; then file "$path"; fi
    done
    continue ;;
  esac
  if [ -f "$source" ]; then
    file "$source"
    continue
  fi
  [ -d "$source" ] || continue
  for folder in "$source"/*/*; do
    [ -d "$folder" ] || continue
    for name in buildpack.toml extension.toml detect/plan.toml; do
      if [ -f "$folder/$name" ]; then file "$folder/$name"; fi
    done
    for name in bin/detect bin/generate; do
      if [ -e "$folder/$name" ]; then printf 'e %s\\n' "$folder/$name"; fi
    done
    if [ -f "$folder/extension.toml" ]; then walk "$folder/generate"; fi
  done
done
send
"""

# Sends the top files of a batch folder ($1), then the trees named after it.
_EMIT = f"""\
#!/bin/sh
{_FRAMING}
cd "$1" || exit 120
shift
for name in *; do
  [ -f "$name" ] || continue
  case $name in *.sh) continue ;; esac
  file "$name"
done
for name in "$@"; do
  walk "$name"
done
send
"""
_SIZES = b"@@imgext-sizes\n"
_DATA = b"@@imgext-data\n"
# An exec's command is one argv string, which Linux caps at 128 KiB; bigger
# batches go in with put_archive first.
_INLINE_LIMIT = 100_000

_REMOVALS: list[threading.Thread] = []
_REMOVALS_LOCK = threading.Lock()

# The exit code of a job that could not enter the app folder.
_CODE_NO_APP = 121
_END = b"\0" * (tarfile.BLOCKSIZE * 2)


@dataclass(frozen=True)
class Job:
    """One executable to run, with its arguments and environment."""

    name: str
    executable: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    platform_env: tuple[tuple[str, str], ...] = ()
    # The builder's build-config/env files, by file name (`NAME.default`...).
    build_config: tuple[tuple[str, str], ...] = ()


@dataclass
class Batch:
    """Jobs plus the input files and empty folders they need, all inside `path`."""

    name: str
    path: str
    jobs: list[Job] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    folders: list[str] = field(default_factory=list)
    # Folders of results with any content, fetched whole, not just top files.
    trees: list[str] = field(default_factory=list)

    def at(self, relative: str) -> str:
        """The path, as the runner sees it, of a file of this batch."""
        return str(PurePosixPath(self.path) / relative)


@dataclass(frozen=True)
class Outcome:
    """How a job ended; `code` -1 when it left no exit code at all."""

    code: int
    stdout: str
    stderr: str


def exit_text(code: int) -> str:
    """An exit code as a message says it; -1 is an executable that left none."""
    return f"exit code {code}" if code >= 0 else "no exit code"


@dataclass(frozen=True)
class Target:
    """The `CNB_TARGET_*` values executables receive."""

    os: str = "linux"
    arch: str = ""
    arch_variant: str = ""
    distro_name: str = ""
    distro_version: str = ""

    def env(self) -> tuple[tuple[str, str], ...]:
        pairs = [("CNB_TARGET_OS", self.os), ("CNB_TARGET_ARCH", self.arch)]
        pairs += [
            ("CNB_TARGET_ARCH_VARIANT", self.arch_variant),
            ("CNB_TARGET_DISTRO_NAME", self.distro_name),
            ("CNB_TARGET_DISTRO_VERSION", self.distro_version),
        ]
        return tuple((k, v) for k, v in pairs if v)


JobListener = Callable[[str, int | None], None]
"""Told a job's name when it starts (None) and ends (its exit code)."""


def no_listener(job: str, code: int | None) -> None:
    """The job listener used when nobody follows a batch."""


class JobMarkers:
    """Reads the driver's stderr: job markers go to the listener, anything
    else is kept as the driver's own complaint."""

    def __init__(self, listener: JobListener) -> None:
        self._listener = listener
        self._pending = b""
        self.other = bytearray()

    def feed(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = b""

    def _line(self, line: bytes) -> None:
        words = line.removeprefix(_MARKER).split()
        if not line.startswith(_MARKER) or len(words) < 2:
            self.other += line + b"\n"
            return
        name = words[1].decode(errors="replace")
        if words[0] == b"start":
            self._listener(name, None)
        elif len(words) == 3 and words[2].isdigit():
            self._listener(name, int(words[2]))


class Runner:
    """Where executables run; subclasses move files and start the driver."""

    app: str
    platform: str
    target: Target

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def batch(self, name: str) -> Batch:
        raise NotImplementedError

    def run(
        self, batch: Batch, *, parallel: bool, on_job: JobListener = no_listener
    ) -> Path:
        """Run every job of `batch`; return a local folder with its results.

        `on_job` hears of each job's start and end while the batch runs.
        """
        raise NotImplementedError

    def component_root(self, local: Path) -> str:
        """The path, as executables see it, of a component folder found locally."""
        raise NotImplementedError

    def static_output(self, root: str, local: Path) -> Path:
        """A local copy of the `generate/` folder of an extension without
        bin/generate, whose folder is `root` to executables and `local` here."""
        raise NotImplementedError


class HostRunner(Runner):
    """Runs executables as host processes, in the app folder given."""

    def __init__(self, app: Path, platform: Path | None, target: Target) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="imgext-run-"))
        if platform is None:
            # Executables still get a real, empty platform folder.
            platform = self._scratch / "platform"
            platform.mkdir()
        self.app = str(app.resolve())
        self.platform = str(platform.resolve())
        self.target = target
        driver = self._scratch / "driver.sh"
        driver.write_text(_DRIVER)

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    def batch(self, name: str) -> Batch:
        return Batch(name, str(self._scratch / name))

    def run(
        self, batch: Batch, *, parallel: bool, on_job: JobListener = no_listener
    ) -> Path:
        folder = Path(batch.path)
        for name, data in _materials(batch, self).items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                path.mkdir(exist_ok=True)
            else:
                path.write_bytes(data)
        mode = "parallel" if parallel else "serial"
        markers = JobMarkers(on_job)
        with subprocess.Popen(
            ["/bin/sh", str(self._scratch / "driver.sh"), str(folder), mode],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as driver:
            assert driver.stderr is not None
            for line in driver.stderr:
                markers.feed(line)
        markers.close()
        if markers.other.strip():
            log.debug(
                "batch driver: %s",
                markers.other.decode(errors="replace").strip(),
                extra={"phase": batch.name.partition("-")[0]},
            )
        return folder

    def component_root(self, local: Path) -> str:
        return str(local.resolve())

    def static_output(self, root: str, local: Path) -> Path:
        return local / "generate"


class ContainerRunner(Runner):
    """Runs executables in one container of a builder image, as its CNB user.

    Each batch costs one exec: its files are written by the exec's own shell
    command and its small results come back framed on stdout; only generate
    outputs, which may hold any files, come back with get_archive.
    """

    def __init__(
        self,
        daemon: Daemon,
        image: str,
        app: Path,
        platform: Path | None,
        *,
        mirror: Sequence[str] = (),
        network: str | None = None,
    ) -> None:
        self.app = CONTAINER_APP
        self.platform = CONTAINER_PLATFORM
        self._daemon = daemon
        self._image = image
        self._local = Path(tempfile.mkdtemp(prefix="imgext-builder-"))
        self._container: str | None = None
        self.mirrored = self._local / "mirror"
        self.info = daemon.ensure_image(image)
        self.user = builder_user(self.info, image)
        self.target = image_target(self.info)
        try:
            self._start(app, platform, mirror, network)
        except BaseException:
            self.close()
            raise

    def _start(
        self,
        app: Path,
        platform: Path | None,
        mirror: Sequence[str],
        network: str | None,
    ) -> None:
        """Start the container; its main process first sends a mirror of
        `mirror` (descriptors and the like, see `_MIRROR`) while the app and
        platform folders are copied in alongside, then waits for execs.

        SIGTERM ends it at once (close() sends it without waiting); it is
        bounded, so a container orphaned by a killed imgext goes away by
        itself, and AutoRemove then deletes it.
        """
        began = time.monotonic()
        api = self._daemon.client
        sources = " ".join(shell_quote(s) for s in mirror)
        # The daemon's log copier passes on whole lines only: without the
        # newline after it, a last file that does not end in one would wait
        # there for as long as the container runs.
        main = (
            f"set -- {sources}\n{_MIRROR}\necho\n"
            "trap 'exit 0' TERM\nsleep 3600 &\nwait\n"
        )
        try:
            created = api.create_container(
                self._image,
                entrypoint=["/bin/sh"],
                command=["-c", main],
                user=self.user,
                working_dir="/",
                labels={"io.imgext.role": "detect"},
                # No network unless asked: detect and generate read the app and
                # write files, and a container without one starts faster.
                host_config=api.create_host_config(
                    auto_remove=True, network_mode=network or "none"
                ),
            )
        except docker.errors.APIError as exc:
            raise DaemonError(
                f"cannot create a container of the builder {self._image}: "
                f"{exc.explanation or exc}"
            ) from None
        self._container = created["Id"]
        uid, _, gid = self.user.partition(":")
        inputs = _Background(
            lambda: self._daemon.fork().client.put_archive(
                created["Id"],
                "/",
                _context.coalesce(
                    _inputs_tar(app, platform, int(uid), int(gid or uid))
                ),
            )
        )
        try:
            api.start(self._container)
            sent = self._read_mirror()
        except docker.errors.APIError as exc:
            raise DaemonError(
                f"cannot start a container of the builder {self._image}: "
                f"{exc.explanation or exc}"
            ) from None
        finally:
            inputs.join()
        for tree in _unpack(sent, self.mirrored):
            marker = self.mirrored / PurePosixPath(tree).relative_to("/")
            marker.with_name(f"{marker.name}.special").touch()
        log.debug(
            "builder container %s ready in %.2fs",
            (self._container or "")[:12],
            time.monotonic() - began,
            extra={"phase": "detect"},
        )

    def _read_mirror(self) -> bytes:
        # The main process keeps running after it sent the mirror, so read
        # exactly what `send` announced, on a connection of its own.
        assert self._container is not None
        client = self._daemon.fork().client
        received = bytearray()
        try:
            for chunk in client.logs(
                self._container, stdout=True, stderr=False, stream=True, follow=True
            ):
                received += chunk
                if _sent_length(received) is not None:
                    break
        finally:
            client.close()
        length = _sent_length(received)
        if length is None:
            raise UsageError(
                f"the builder {self._image} cannot run imgext's shell driver; "
                f"it sent: {bytes(received[:300])!r}",
                hint="a builder needs sh, env, cat, wc, find, mkdir and sleep",
            )
        return bytes(received[:length])

    def close(self) -> None:
        if self._container is not None:
            # The shell ends on SIGTERM and AutoRemove deletes the container.
            # That takes a few hundred milliseconds, which need not hold up
            # what comes next (extend, in the one-command path): a thread
            # waits for it, and the process does not exit before it is done.
            waiter = threading.Thread(
                target=_remove,
                args=(self._daemon.fork(), self._container),
                name=f"imgext-remove-{self._container[:12]}",
            )
            waiter.start()
            with _REMOVALS_LOCK:
                _REMOVALS.append(waiter)
            self._container = None
        shutil.rmtree(self._local, ignore_errors=True)

    def batch(self, name: str) -> Batch:
        return Batch(name, f"{CONTAINER_SCRATCH}/{name}")

    def run(
        self, batch: Batch, *, parallel: bool, on_job: JobListener = no_listener
    ) -> Path:
        materials = _materials(batch, self)
        mode = "parallel" if parallel else "serial"
        folders = [batch.path] + [
            f"{batch.path}/{name}" for name, data in materials.items() if data is None
        ]
        lines = [
            f"mkdir -p {' '.join(map(shell_quote, folders))} || exit 120",
            f"cd {shell_quote(batch.path)} || exit 120",
        ]
        for name, data in sorted(materials.items()):
            if data is not None:
                text = data.decode("utf-8", "surrogateescape")
                lines.append(f"printf '%s' {shell_quote(text)} >{shell_quote(name)}")
        script = "\n".join(lines) + "\n"
        if len(script) > _INLINE_LIMIT:
            self._put(batch, materials)
            script = ""
        trees = " ".join(shell_quote(t) for t in batch.trees)
        script += (
            f"sh {CONTAINER_SCRATCH}/driver.sh {shell_quote(batch.path)} {mode}\n"
            f"sh {CONTAINER_SCRATCH}/emit.sh {shell_quote(batch.path)} {trees}\n"
        )
        stdout = self._exec(["/bin/sh", "-c", script], on_job)
        local = self._local / batch.name
        shutil.rmtree(local, ignore_errors=True)
        special = _unpack(stdout, local)
        for folder in batch.trees:
            if folder in special:
                shutil.rmtree(local / folder, ignore_errors=True)
                self._fetch(f"{batch.path}/{folder}", local)
        return local

    def static_output(self, root: str, local: Path) -> Path:
        if not (local / "generate.special").exists():
            return local / "generate"
        target = self._local / "static" / root.strip("/").replace("/", "_")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        self._fetch(f"{root}/generate", target)
        return target / "generate"

    def component_root(self, local: Path) -> str:
        # Mirrored components keep their in-image path below the mirror root.
        relative = local.resolve().relative_to((self._local / "mirror").resolve())
        return "/" + relative.as_posix()

    def _put(self, batch: Batch, materials: dict[str, bytes | None]) -> None:
        assert self._container is not None
        uid, _, gid = self.user.partition(":")
        tar = _tar_of(
            {f"{batch.name}/{k}": v for k, v in materials.items()},
            int(uid),
            int(gid or uid),
            root=batch.name,
        )
        try:
            self._daemon.client.put_archive(self._container, CONTAINER_SCRATCH, tar)
        except docker.errors.APIError as exc:
            raise DaemonError(f"cannot copy inputs into the builder: {exc}") from None

    def _exec(self, command: list[str], on_job: JobListener = no_listener) -> bytes:
        assert self._container is not None
        api = self._daemon.client
        stdout = bytearray()
        markers = JobMarkers(on_job)
        try:
            created = api.exec_create(self._container, command, user=self.user)
            # Streamed, so that the driver's job markers arrive as they happen.
            for out, err in api.exec_start(created["Id"], stream=True, demux=True):
                stdout += out or b""
                markers.feed(err or b"")
            markers.close()
            code = api.exec_inspect(created["Id"]).get("ExitCode")
        except docker.errors.APIError as exc:
            raise DaemonError(
                f"cannot run in the builder container: {exc.explanation or exc}"
            ) from None
        if code != 0:
            text = markers.other.decode(errors="replace").strip()
            raise UsageError(
                f"the builder {self._image} cannot run imgext's shell driver "
                f"(exit {code}): {text}",
                hint="a builder needs sh, env, cat, wc, tr, find, mkdir and sleep",
            )
        return bytes(stdout)

    def _fetch(self, path: str, into: Path) -> None:
        assert self._container is not None
        try:
            stream, _ = self._daemon.client.get_archive(self._container, path)
            data = b"".join(stream)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise DaemonError(f"cannot copy {path} out of the builder: {exc}") from None
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(into, filter="data")


class _Background:
    """Runs a call in a thread; `join` re-raises what it raised."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,))
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # handed to the joining thread
            self._error = exc

    def join(self) -> None:
        self._thread.join()
        if isinstance(self._error, docker.errors.APIError):
            raise DaemonError(
                f"cannot copy the app into the builder: "
                f"{self._error.explanation or self._error}"
            ) from None
        if self._error is not None:
            raise self._error


def _sent_length(received: bytes | bytearray) -> int | None:
    """The length of what `send` printed, once all of it is in `received`."""
    sizes_at = received.find(_SIZES)
    data_at = received.find(_DATA, sizes_at + 1) if sizes_at >= 0 else -1
    if data_at < 0:
        return None
    files = sum(
        1
        for line in bytes(received[:sizes_at]).splitlines()
        if line[:2] in (b"f ", b"x ")
    )
    sizes = bytes(received[sizes_at + len(_SIZES) : data_at]).splitlines()[:files]
    end = data_at + len(_DATA) + sum(int(line.split()[0]) for line in sizes)
    return end if len(received) >= end else None


def _unpack(stdout: bytes, root: Path) -> set[str]:
    """Write the files `send` printed below `root`; return the special trees."""
    listing, found, rest = stdout.partition(_SIZES)
    sizes_text, found_data, data = rest.partition(_DATA)
    if not found or not found_data:
        raise DaemonError(f"unexpected output from the builder: {stdout[:200]!r}")
    files: list[tuple[Path, bool]] = []
    special = set()
    for line in listing.decode("utf-8", "surrogateescape").splitlines():
        kind, _, name = line.partition(" ")
        relative = PurePosixPath(name)
        if kind not in ("f", "x", "d", "e", "s") or ".." in relative.parts:
            raise DaemonError(f"unexpected output from the builder: {line[:200]!r}")
        target = root / relative.relative_to(relative.anchor)
        if kind == "d":
            target.mkdir(parents=True, exist_ok=True)
        elif kind == "e":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.with_name(f"{target.name}.exists").touch()
        elif kind == "s":
            special.add(name)
        else:
            files.append((target, kind == "x"))
    sizes = [int(line.split()[0]) for line in sizes_text.decode().splitlines()]
    position = 0
    for (target, executable), size in zip(files, sizes, strict=False):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[position : position + size])
        target.chmod(0o755 if executable else 0o644)
        position += size
    if len(sizes) < len(files) or position != len(data):
        raise DaemonError("the builder sent files of other sizes than it listed")
    return special


def wait_for_removals() -> None:
    """Return once every builder container imgext started is gone."""
    with _REMOVALS_LOCK:
        waiters = list(_REMOVALS)
        _REMOVALS.clear()
    for waiter in waiters:
        waiter.join()


def _remove(daemon: Daemon, container: str) -> None:
    api = daemon.client
    try:
        api.kill(container, signal="TERM")
        api.wait(container, condition="removed", timeout=30)
        return
    except docker.errors.NotFound:
        return
    except (docker.errors.APIError, requests.RequestException):
        pass
    # The container ignored SIGTERM or AutoRemove did not come: force it.
    try:
        api.remove_container(container, force=True)
    except docker.errors.NotFound:
        pass
    except (docker.errors.APIError, requests.RequestException) as exc:
        log.warning("could not remove container %s: %s", container[:12], exc)


def builder_user(info: Mapping[str, Any], image: str) -> str:
    """`uid:gid` from the builder's CNB_USER_ID/CNB_GROUP_ID."""
    env = dict(
        item.split("=", 1)
        for item in (info.get("Config") or {}).get("Env") or []
        if "=" in item
    )
    uid, gid = env.get("CNB_USER_ID", ""), env.get("CNB_GROUP_ID", "")
    if not uid.isdigit() or not gid.isdigit():
        raise UsageError(
            f"builder {image} sets no numeric CNB_USER_ID and CNB_GROUP_ID",
            hint="a builder image declares the user buildpacks run as in its ENV",
        )
    return f"{uid}:{gid}"


def image_target(info: Mapping[str, Any]) -> Target:
    """The target of an image: its OS and architecture, and distro labels."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    return Target(
        os=str(info.get("Os") or "linux"),
        arch=str(info.get("Architecture") or ""),
        arch_variant=str(info.get("Variant") or ""),
        distro_name=str(labels.get("io.buildpacks.base.distro.name", "")),
        distro_version=str(labels.get("io.buildpacks.base.distro.version", "")),
    )


def host_target() -> Target:
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine)
    return Target(os="linux", arch=arch or machine)


def read_outcome(results: Path, job: str) -> Outcome:
    def text(suffix: str) -> str:
        path = results / f"{job}.{suffix}"
        return path.read_text(errors="replace") if path.is_file() else ""

    code = text("code").strip()
    return Outcome(
        code=int(code) if code.lstrip("-").isdigit() else -1,
        stdout=text("out"),
        stderr=text("err"),
    )


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def job_script(job: Job, app: str) -> str:
    """The shell script that runs `job` in `app` with exactly its environment:
    the variables the lifecycle passes on, then `<platform>/env`, then the
    builder's `build-config/env`, then the job's own, as the lifecycle
    layers them."""
    inherited = INHERITED_ENV + PATH_LIKE_ENV
    lines = [f"cd {shell_quote(app)} || exit {_CODE_NO_APP}"]
    # A variable the runtime may hold already (PATH, HOME...) is composed by
    # the shell, which knows its value; any other is computed here, so that
    # a name that is no shell identifier still works.
    known: dict[str, str] = {}
    for name, value in job.platform_env:
        if name in PATH_LIKE_ENV:
            lines.append(f'{name}={shell_quote(value)}"${{{name}:+:${name}}}"')
        elif name in inherited:
            lines.append(f"{name}={shell_quote(value)}")
        else:
            known[name] = value
    delimiters = {
        file.removesuffix(".delim"): value
        for file, value in job.build_config
        if file.endswith(".delim")
    }
    for file, value in job.build_config:
        name, _, action = file.partition(".")
        if not name or action not in _ACTIONS:
            continue
        delimiter = delimiters.get(name, "")
        if name in inherited:
            lines.append(_shell_action(name, action, value, delimiter))
        else:
            known[name] = _apply(known.get(name, ""), action, value, delimiter)
    words = ["exec", "env", "-i", *(f'${{{n}+"{n}=${n}"}}' for n in inherited)]
    words += [shell_quote(f"{k}={v}") for k, v in known.items()]
    words += [shell_quote(f"{k}={v}") for k, v in job.env]
    words += [shell_quote(job.executable), *map(shell_quote, job.args)]
    return "\n".join([*lines, " ".join(words)]) + "\n"


# What a build-config/env file does to its variable, by its suffix; none
# overrides, as in the lifecycle. `.delim` files give append and prepend their
# delimiter (none by default).
_ACTIONS = ("", "override", "default", "append", "prepend")


def _apply(current: str, action: str, value: str, delimiter: str) -> str:
    if action == "default":
        return current or value
    if action == "prepend":
        return value + (delimiter + current if current else "")
    if action == "append":
        return (current + delimiter if current else "") + value
    return value


def _shell_action(name: str, action: str, value: str, delimiter: str) -> str:
    # The delimiter goes through a variable: quotes inside "${x:+...}" are not
    # removed alike by every shell.
    quoted = shell_quote(value)
    if action == "default":
        return f'[ -n "${{{name}:-}}" ] || {name}={quoted}'
    if action == "prepend":
        return f'_d={shell_quote(delimiter)}; {name}={quoted}"${{{name}:+$_d${name}}}"'
    if action == "append":
        return f'_d={shell_quote(delimiter)}; {name}="${{{name}:+${name}$_d}}"{quoted}'
    return f"{name}={quoted}"


def _materials(batch: Batch, runner: Runner) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) of a batch, by relative path."""
    files: dict[str, bytes | None] = {f: None for f in batch.folders}
    files.update(batch.files)
    for job in batch.jobs:
        files[f"{job.name}.sh"] = job_script(job, runner.app).encode()
    files["jobs"] = "".join(f"{job.name}\n" for job in batch.jobs).encode()
    return files


def _tar_of(
    files: Mapping[str, bytes | None], uid: int, gid: int, *, root: str | None
) -> bytes:
    return b"".join(_entries(files, uid, gid, root=root)) + _END


def _entries(
    files: Mapping[str, bytes | None], uid: int, gid: int, *, root: str | None
) -> Iterator[bytes]:
    """Tar members of `files`, their parent folders first, with no end marker."""
    folders = {root} if root else set()
    for name, data in files.items():
        parent = PurePosixPath(name) if data is None else PurePosixPath(name).parent
        while str(parent) not in (".", ""):
            folders.add(str(parent))
            parent = parent.parent
    for name in sorted(folders):
        yield _header(_info(name, uid, gid, tarfile.DIRTYPE, 0o755))
    for name, data in sorted(files.items()):
        if data is None:
            continue
        info = _info(name, uid, gid, tarfile.REGTYPE, 0o644)
        info.size = len(data)
        yield _header(info)
        yield data
        if len(data) % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE)


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _info(name: str, uid: int, gid: int, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = int(time.time())
    return info


def _inputs_tar(
    app: Path, platform: Path | None, uid: int, gid: int
) -> Iterator[bytes]:
    """The app and platform folders, the driver, and a scratch folder the CNB
    user owns; the app stays root's, as read-only input of detect and generate."""
    scratch = CONTAINER_SCRATCH.lstrip("/")
    yield from _entries(
        {
            f"{scratch}/driver.sh": _DRIVER.encode(),
            f"{scratch}/emit.sh": _EMIT.encode(),
        },
        uid,
        gid,
        root=scratch,
    )
    for local, inside in ((app, CONTAINER_APP), (platform, CONTAINER_PLATFORM)):
        yield _header(_info(inside.lstrip("/"), 0, 0, tarfile.DIRTYPE, 0o755))
        if local is None:
            continue
        if not local.is_dir():
            raise UsageError(f"not a folder: {local}")
        yield from _tree(local, inside.lstrip("/"))
    yield _END


def _tree(root: Path, prefix: str) -> Iterator[bytes]:
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        base = Path(folder)
        for name in sorted(dirs) + sorted(names):
            path = base / name
            relative = f"{prefix}/{path.relative_to(root).as_posix()}"
            try:
                yield from _context._member(path, relative)
            except OSError as exc:
                raise ImgextError(f"cannot read {path}: {exc}") from None
