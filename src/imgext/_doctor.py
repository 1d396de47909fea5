"""`imgext doctor`: check the setup imgext needs and say what is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import docker.auth
import docker.errors
import requests

from ._daemon import BUILDKIT_MIN_API, Daemon
from ._errors import ExitCode, ImgextError
from ._extend import TEMP_REPOSITORY
from ._generated import read_analyzed
from ._progress import clean, human_size

DEFAULT_HOST = "unix:///var/run/docker.sock"
# Below these, extending a Debian-sized image is likely to run out of space.
DISK_FAIL = 1_000_000_000
DISK_WARN = 5_000_000_000


@dataclass(frozen=True)
class Check:
    """One finding: `status` is ok, warn or fail."""

    name: str
    status: str
    detail: str
    hint: str | None = None
    exit_code: int = ExitCode.OK


@dataclass
class Setup:
    """What the checks read from the machine; tests replace the parts."""

    env: Mapping[str, str]
    connect: Callable[[], Daemon] = Daemon.connect
    disk_usage: Callable[[str], Any] = shutil.disk_usage
    http_get: Callable[[str], requests.Response] = lambda url: requests.get(
        url, timeout=5
    )


def run(
    setup: Setup,
    *,
    images: list[str],
    layers: Path | None = None,
    registry: str | None = None,
) -> list[Check]:
    """Run every check; the daemon's own checks only if it can be reached."""
    checks = [_context(setup)]
    try:
        daemon = setup.connect()
    except ImgextError as exc:
        checks.append(
            Check(
                "daemon",
                "fail",
                exc.message,
                exc.hint,
                ExitCode.DAEMON_UNREACHABLE,
            )
        )
        return checks
    checks.append(_daemon(daemon))
    checks.append(_buildkit(daemon))
    checks.extend(_images(daemon, images, layers))
    checks.append(_disk(daemon, setup))
    checks.append(_leftovers(daemon))
    if registry:
        checks.extend(_registry(registry, setup))
    return checks


def exit_code(checks: list[Check]) -> int:
    """The code of the first failed check, 0 when none failed."""
    return next(
        (c.exit_code or ExitCode.FAILED for c in checks if c.status == "fail"), 0
    )


def to_text(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        label = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}[check.status]
        lines.append(f"{label:<5} {check.name:<9} {clean(check.detail)}")
        if check.hint and check.status != "ok":
            lines.append(f"{'':<15} hint: {check.hint}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        lines.append(f"{failed} problem(s) to fix before imgext can work")
    elif warned:
        lines.append(f"imgext can work; {warned} warning(s) above")
    else:
        lines.append("everything imgext needs is in place")
    return "\n".join(lines) + "\n"


def to_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2) + "\n"


def _context(setup: Setup) -> Check:
    host = setup.env.get("DOCKER_HOST")
    if host:
        return Check("endpoint", "ok", f"DOCKER_HOST={host}")
    config = _config_dir(setup.env)
    context = setup.env.get("DOCKER_CONTEXT") or _read_json(config / "config.json").get(
        "currentContext"
    )
    if not context or context == "default":
        return Check("endpoint", "ok", f"{DEFAULT_HOST} (DOCKER_HOST not set)")
    # imgext connects as docker-py does, from DOCKER_HOST only: a Docker CLI
    # context would be silently ignored, so say which endpoint it names.
    digest = hashlib.sha256(context.encode()).hexdigest()
    meta = _read_json(config / "contexts" / "meta" / digest / "meta.json")
    endpoint = ((meta.get("Endpoints") or {}).get("docker") or {}).get("Host")
    if not endpoint or endpoint == DEFAULT_HOST:
        return Check("endpoint", "ok", f"{DEFAULT_HOST} (Docker context {context})")
    return Check(
        "endpoint",
        "warn",
        f"the Docker CLI uses context {context} ({endpoint}), but imgext reads only "
        f"DOCKER_HOST and so talks to {DEFAULT_HOST}",
        f"export DOCKER_HOST={endpoint}",
    )


def _daemon(daemon: Daemon) -> Check:
    version = daemon.version()
    used = ".".join(str(p) for p in daemon.api_version)
    return Check(
        "daemon",
        "ok",
        f"reachable: Docker {version.get('Version', '?')} on {version.get('Os', '?')}"
        f"/{version.get('Arch', '?')}, API {version.get('ApiVersion', '?')} "
        f"(imgext uses {used})",
    )


def _buildkit(daemon: Daemon) -> Check:
    if daemon.buildkit_available():
        return Check("buildkit", "ok", "available: /build with version=2")
    wanted = ".".join(str(p) for p in BUILDKIT_MIN_API)
    return Check(
        "buildkit",
        "warn",
        f"not available (needs a Linux daemon with API {wanted} or later); imgext "
        "will use the classic builder",
        "upgrade the Docker engine for faster, better cached builds",
    )


def _images(daemon: Daemon, images: list[str], layers: Path | None) -> list[Check]:
    wanted = list(images)
    if layers is not None and not wanted:
        analyzed_path = layers / "analyzed.toml"
        if not analyzed_path.exists():
            return [
                Check(
                    "image",
                    "fail",
                    f"{analyzed_path} does not exist",
                    "pass --layers the platform's layers directory, or name the "
                    "images with --build-image/--run-image",
                    ExitCode.USAGE,
                )
            ]
        try:
            analyzed = read_analyzed(analyzed_path)
        except ImgextError as exc:
            return [Check("image", "fail", exc.message, exc.hint, ExitCode.USAGE)]
        wanted = [i for i in (analyzed.build_image, analyzed.run_image) if i]
    if not wanted:
        return [
            Check(
                "image",
                "ok",
                "no base image named, none checked",
                "pass --layers DIR or --build-image/--run-image to check them",
            )
        ]
    checks = []
    for ref in wanted:
        info = daemon.inspect_image(ref)
        if info is None:
            checks.append(
                Check(
                    "image",
                    "fail",
                    f"{ref} is not in the daemon",
                    f"`docker pull {ref}` (imgext pulls it too, with your Docker "
                    "credentials), or `docker load` it",
                    ExitCode.IMAGE_MISSING,
                )
            )
            continue
        short = str(info.get("Id", "")).removeprefix("sha256:")[:12]
        user = (info.get("Config") or {}).get("User") or "root"
        checks.append(
            Check(
                "image",
                "ok",
                f"{ref} present ({short}, {human_size(info.get('Size'))}, user {user})",
            )
        )
    return checks


def _disk(daemon: Daemon, setup: Setup) -> Check:
    info: dict[str, Any] = daemon.client.info()
    root = str(info.get("DockerRootDir") or "/var/lib/docker")
    host = setup.env.get("DOCKER_HOST", DEFAULT_HOST)
    if not host.startswith("unix://"):
        return Check(
            "disk",
            "ok",
            f"not measured: the daemon is remote ({host}), its data is in {root}",
        )
    try:
        free = int(setup.disk_usage(root).free)
    except OSError as exc:
        return Check("disk", "warn", f"cannot measure free space of {root}: {exc}")
    detail = f"{human_size(free)} free in {root}"
    if free < DISK_FAIL:
        return Check(
            "disk",
            "fail",
            detail,
            "free space: `docker builder prune` removes build cache",
            ExitCode.FAILED,
        )
    if free < DISK_WARN:
        return Check("disk", "warn", detail, "extending large images may fill it")
    return Check("disk", "ok", detail)


def _leftovers(daemon: Daemon) -> Check:
    """Temporary tags and builder containers that a killed imgext left.

    Ctrl-C and SIGTERM clean up; only a SIGKILL (or a crash of the machine)
    leaves these. Whether another imgext is at work on this daemon right now
    cannot be told from here, so this only reports them.
    """
    api = daemon.client
    try:
        tags = sorted(
            tag
            for image in api.images()
            for tag in image.get("RepoTags") or []
            if tag.startswith(f"{TEMP_REPOSITORY}/")
        )
        containers = [
            c["Id"][:12]
            for c in api.containers(all=True, filters={"label": "io.imgext.role"})
        ]
    except docker.errors.APIError as exc:
        return Check("leftover", "warn", f"cannot list images and containers: {exc}")
    if not tags and not containers:
        return Check("leftover", "ok", "nothing left behind by an interrupted run")
    found = []
    commands = []
    if tags:
        shown = ", ".join(tags[:3]) + (
            f" and {len(tags) - 3} more" if len(tags) > 3 else ""
        )
        found.append(f"{len(tags)} temporary tag(s) ({shown})")
        commands.append(f"docker rmi {' '.join(tags)}")
    if containers:
        found.append(f"{len(containers)} detect container(s) ({', '.join(containers)})")
        commands.append(f"docker rm -f {' '.join(containers)}")
    return Check(
        "leftover",
        "warn",
        f"{' and '.join(found)} left by an imgext that was killed, or still at work",
        "when no imgext is running on this daemon: " + "; ".join(commands),
    )


def _registry(registry: str, setup: Setup) -> list[Check]:
    checks = []
    reached = None
    errors = []
    for scheme in ("https", "http"):
        try:
            response = setup.http_get(f"{scheme}://{registry}/v2/")
        except requests.RequestException as exc:
            errors.append(f"{scheme}: {_reason(exc)}")
            continue
        if response.status_code in (200, 401):
            reached = f"{scheme}://{registry}/v2/ answered {response.status_code}"
            break
        errors.append(f"{scheme}: HTTP {response.status_code}")
    if reached is None:
        checks.append(
            Check(
                "registry",
                "fail",
                f"{registry} cannot be reached: {'; '.join(errors)}",
                "check the host name and port, and any proxy",
                ExitCode.REGISTRY_FAILED,
            )
        )
    else:
        checks.append(Check("registry", "ok", f"{registry} reachable ({reached})"))
    data = _read_json(_config_dir(setup.env) / "config.json")
    config = docker.auth.load_config(config_dict=data)
    credentials = docker.auth.resolve_authconfig(config, registry)
    if credentials:
        user = credentials.get("username") or credentials.get("Username") or "?"
        checks.append(Check("login", "ok", f"logged in to {registry} as {user}"))
    else:
        checks.append(
            Check(
                "login",
                "warn",
                f"no credentials for {registry} in the Docker config",
                f"`docker login {registry}` before pushing",
            )
        )
    return checks


def _reason(exc: Exception) -> str:
    # requests wraps the socket error in two layers of repr; keep its words.
    match = re.search(r"\[Errno -?\d+\] [^\"')]+", str(exc))
    return match.group(0) if match else type(exc).__name__


def _config_dir(env: Mapping[str, str]) -> Path:
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return Path(env.get("HOME") or Path.home()) / ".docker"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def default_setup() -> Setup:
    return Setup(env=dict(os.environ))
