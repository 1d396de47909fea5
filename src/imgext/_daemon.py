"""Access to the Docker daemon through docker-py's Engine API client."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import docker
import docker.errors
import requests
from docker.context import ContextAPI
from docker.utils import parse_repository_tag

from ._errors import DaemonError, ImageMissingError, ImgextError, Interrupted

log = logging.getLogger("imgext")

# /build with version=2 (BuildKit) needs Engine API 1.38 or later.
BUILDKIT_MIN_API = (1, 38)


class Builder(StrEnum):
    """Which of the daemon's builders applies Dockerfiles."""

    AUTO = "auto"
    BUILDKIT = "buildkit"
    CLASSIC = "classic"


@dataclass
class BuildFailure(Exception):
    """An error the daemon reported inside a build stream."""

    message: str
    output: list[str] = field(default_factory=list)
    step: str | None = None


class Cancel:
    """Shared by the threads of one run: set it and every stream is closed."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._open: set[requests.Response] = set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            responses = list(self._open)
        for response in responses:
            _abort(response)

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted("interrupted")

    def track(self, response: requests.Response) -> None:
        with self._lock:
            self._open.add(response)
        if self._event.is_set():
            _abort(response)

    def untrack(self, response: requests.Response) -> None:
        with self._lock:
            self._open.discard(response)


class Daemon:
    """One connection to the daemon; make one per thread with `fork`."""

    def __init__(self, client: docker.APIClient, options: dict[str, Any]) -> None:
        self.client = client
        self._options = options

    @classmethod
    def connect(cls) -> Daemon:
        """Connect as the Docker CLI would: DOCKER_HOST, TLS variables, socket."""
        options = _connection_options()
        try:
            client = docker.APIClient(version="auto", **options)
            client.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise DaemonError(
                f"cannot reach the Docker daemon: {exc}",
                hint="start dockerd, or set DOCKER_HOST to a daemon you can reach",
            ) from None
        return cls(client, options)

    def fork(self) -> Daemon:
        """A new connection to the same daemon, for another thread."""
        client = docker.APIClient(version=self.client.api_version, **self._options)
        return Daemon(client, self._options)

    @property
    def api_version(self) -> tuple[int, int]:
        major, minor = self.client.api_version.split(".")[:2]
        return int(major), int(minor)

    def buildkit_available(self) -> bool:
        info = self.version()
        return self.api_version >= BUILDKIT_MIN_API and info.get("Os") == "linux"

    def version(self) -> dict[str, Any]:
        return self._call(self.client.version)  # type: ignore[no-any-return]

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.inspect_image, ref)  # type: ignore[no-any-return]
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code in (400, 404):
                return None
            raise

    def ensure_image(
        self, ref: str, *, on_line: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Inspect `ref`, pulling it with the user's credentials if missing."""
        found = self.inspect_image(ref)
        if found is not None:
            return found
        log.info("pulling %s", ref, extra={"phase": "pull"})
        repository, tag = parse_repository_tag(ref)
        try:
            for event in self.client.pull(
                repository, tag or "latest", stream=True, decode=True
            ):
                if "error" in event:
                    raise ImageMissingError(
                        f"image {ref} is not in the daemon and pulling it failed: "
                        f"{event['error']}"
                    )
                if on_line and event.get("status"):
                    on_line(f"{event.get('id', '')} {event['status']}".strip())
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise ImageMissingError(
                f"image {ref} is not in the daemon and pulling it failed: {exc}",
                hint="check the name, `docker login` to its registry, or load it",
            ) from None
        found = self.inspect_image(ref)
        if found is None:
            raise ImageMissingError(f"image {ref} is still missing after a pull")
        return found

    def tag(self, image: str, ref: str) -> None:
        repository, tag = parse_repository_tag(ref)
        self._call(self.client.tag, image, repository, tag or "latest", force=True)

    def remove_tag(self, ref: str) -> None:
        """Delete a tag; the image goes too only if nothing else refers to it."""
        with contextlib.suppress(docker.errors.NotFound):
            self._call(self.client.remove_image, ref, noprune=True)

    def build(
        self,
        context: Iterable[bytes],
        *,
        dockerfile: str,
        buildargs: dict[str, str],
        tag: str,
        builder: Builder,
        nocache: bool,
        network: str | None,
        cancel: Cancel,
        on_output: Callable[[str], None],
        on_trace: Callable[[bytes], None],
        labels: dict[str, str] | None = None,
    ) -> str:
        """Build a tar context with /build, tag the result and return its ID.

        The tag is set here, not by the daemon (`t=`), so that a build cancelled
        by the client can never leave a tag behind after imgext cleaned up.

        docker-py's `build()` cannot select BuildKit (`version=2`) and drops the
        image ID BuildKit reports as `aux`, so the request is made here.
        """
        params: dict[str, Any] = {
            "dockerfile": dockerfile,
            "buildargs": json.dumps(buildargs),
            "nocache": nocache,
            "rm": True,
            "forcerm": True,
            "pull": False,
            "version": "2" if builder is Builder.BUILDKIT else "1",
        }
        if network:
            params["networkmode"] = network
        if labels:
            params["labels"] = json.dumps(labels)
        # docker-py's request helpers are private but are what its own build()
        # uses; relying on them keeps transport, TLS and stream decoding its job.
        api: Any = self.client
        headers = {"Content-Type": "application/x-tar"}
        auth = api._auth_configs.get_all_credentials()
        if auth:
            headers["X-Registry-Config"] = base64.urlsafe_b64encode(
                json.dumps(auth).encode()
            ).decode()
        try:
            response = api._post(
                api._url("/build"),
                data=_cancellable(context, cancel),
                params=params,
                headers=headers,
                stream=True,
                timeout=None,
            )
        except Exception as exc:
            cancel.check()
            if isinstance(exc, ImgextError):
                raise
            raise DaemonError(f"the daemon dropped the build request: {exc}") from None
        cancel.track(response)
        try:
            api._raise_for_status(response)
            image = _read_build_stream(
                api._stream_helper(response, decode=True),
                on_output=on_output,
                on_trace=on_trace,
            )
        except docker.errors.APIError as exc:
            cancel.check()
            raise BuildFailure(str(exc.explanation or exc)) from None
        except BuildFailure:
            cancel.check()
            raise
        except Exception as exc:
            # A stream cut by Cancel.set() surfaces as whatever the HTTP stack
            # raises at that moment; only the cancellation matters then.
            cancel.check()
            raise DaemonError(f"the daemon dropped the build stream: {exc}") from None
        finally:
            cancel.untrack(response)
            response.close()
        cancel.check()
        self.tag(image, tag)
        return image

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except requests.ConnectionError as exc:
            raise DaemonError(f"lost the Docker daemon: {exc}") from None


def _connection_options() -> dict[str, Any]:
    # DOCKER_HOST and the TLS variables win, as with the CLI; otherwise the
    # current `docker context`, which docker-py does not consult by itself.
    options: dict[str, Any] = dict(docker.utils.kwargs_from_env())
    if "base_url" not in options:
        try:
            context = ContextAPI.get_current_context()
        except docker.errors.DockerException:
            context = None
        if context is not None and context.Host:
            options["base_url"] = context.Host
            if context.TLSConfig:
                options["tls"] = context.TLSConfig
    return options


def _read_build_stream(
    events: Iterator[dict[str, Any]],
    *,
    on_output: Callable[[str], None],
    on_trace: Callable[[bytes], None],
) -> str:
    image: str | None = None
    output: list[str] = []
    step: str | None = None
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = event.get("error") or detail.get("message") or "build failed"
            raise BuildFailure(str(message).strip(), output[-50:], step)
        text = event.get("stream")
        if isinstance(text, str):
            for line in text.splitlines():
                if line.startswith("Step ") and " : " in line:
                    step = line.split(" : ", 1)[1]
                output.append(line)
                on_output(line)
        aux = event.get("aux")
        if event.get("id") == "moby.buildkit.trace" and isinstance(aux, str):
            on_trace(base64.b64decode(aux))
        elif isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image = aux["ID"]
    if image is None:
        raise BuildFailure("the daemon finished the build without an image ID", output)
    return image


def _cancellable(chunks: Iterable[bytes], cancel: Cancel) -> Iterator[bytes]:
    for chunk in chunks:
        cancel.check()
        yield chunk


def _abort(response: requests.Response) -> None:
    # Closing the socket is what unblocks a read in another thread; the daemon
    # sees the client go away and cancels the build.
    try:
        raw: Any = response.raw._fp.fp.raw  # type: ignore[union-attr]
        sock: Any = getattr(raw, "_sock", None) or raw
        sock.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):
        pass
    response.close()
