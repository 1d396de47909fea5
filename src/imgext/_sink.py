"""The push transfer: a registry in this process that the daemon pushes to.

It claims to hold every blob the daemon asks about, so the daemon skips each
layer whose compressed digest it already knows (those it pulled or pushed
before: the base's), and uploads only the others, compressed, which land in a
layout's blob directory. Only as much of the distribution API as a push needs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import re
import tempfile
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from ._daemon import Daemon
from ._errors import ImgextError
from ._publish import push
from ._save import CHUNK, Blob, Collected

log = logging.getLogger("imgext")

_UPLOAD = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<id>[0-9a-f]*)$")
_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")


@dataclass
class _State:
    blobs: Path
    withhold: set[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: dict[str, int] = field(default_factory=dict)
    uploads: dict[str, tuple[Path, hashlib._Hash, int]] = field(default_factory=dict)
    manifest: bytes | None = None
    asked: set[str] = field(default_factory=set)


class BlobSink:
    """`with BlobSink(blobs) as sink:` serves on `sink.host` until the block ends.

    Blobs in `withhold` are said to be missing, so the daemon always sends them.
    """

    def __init__(self, blobs: Path, *, withhold: set[str] | None = None) -> None:
        self.state = _State(blobs, set(withhold or ()))
        handler = type("_Handler", (_Handler,), {"state": self.state})
        self._server = _Server(("127.0.0.1", 0), handler)
        # A short poll keeps shutdown quick: serve_forever checks for it so often.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def received(self) -> dict[str, int]:
        """Digest and size of every blob uploaded and verified."""
        with self.state.lock:
            return dict(self.state.received)

    @property
    def manifest(self) -> bytes | None:
        return self.state.manifest

    def __enter__(self) -> BlobSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        for path, _, _ in self.state.uploads.values():
            path.unlink(missing_ok=True)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A request the sink cannot parse fails that push, and the push
        # transfer then falls back to a save; no traceback on the user's screen.
        log.debug("the push transfer's sink failed a request", exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def log_message(self, format: str, *args: object) -> None:
        # The daemon's requests are not the user's business; errors surface
        # through the push stream instead.
        del format, args

    def do_GET(self) -> None:
        self._reply(200 if self.path.rstrip("/") == "/v2" else 404)

    def do_HEAD(self) -> None:
        blob = _BLOB.match(urlsplit(self.path).path)
        if blob is None:
            self._reply(404)
            return
        digest = blob["digest"]
        with self.state.lock:
            self.state.asked.add(digest)
            size = self.state.received.get(digest, 0)
            missing = (
                digest in self.state.withhold and digest not in self.state.received
            )
        if missing:
            self._reply(404)
            return
        # Whatever the daemon asks about, it knows from an earlier pull or push:
        # say it is here, so that it is not sent. The size is never used.
        self._reply(200, {"Docker-Content-Digest": digest}, length=size)

    def do_POST(self) -> None:
        match = _UPLOAD.match(urlsplit(self.path).path)
        if match is None:
            self._reply(404)
            return
        upload = uuid.uuid4().hex
        handle, partial = tempfile.mkstemp(dir=self.state.blobs, prefix=".upload-")
        os.close(handle)
        with self.state.lock:
            self.state.uploads[upload] = (Path(partial), hashlib.sha256(), 0)
        self._reply(202, self._upload_headers(match["name"], upload, 0))

    def do_PATCH(self) -> None:
        match = _UPLOAD.match(urlsplit(self.path).path)
        if match is None or match["id"] not in self.state.uploads:
            self._reply(404)
            return
        size = self._append(match["id"])
        self._reply(202, self._upload_headers(match["name"], match["id"], size))

    def do_PUT(self) -> None:
        url = urlsplit(self.path)
        manifest = _MANIFEST.match(url.path)
        if manifest is not None:
            data = b"".join(self._body())
            self.state.manifest = data
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            self._reply(201, {"Docker-Content-Digest": digest})
            return
        match = _UPLOAD.match(url.path)
        if match is None or match["id"] not in self.state.uploads:
            self._reply(404)
            return
        size = self._append(match["id"])
        wanted = (parse_qs(url.query).get("digest") or [""])[0]
        with self.state.lock:
            path, hasher, _ = self.state.uploads.pop(match["id"])
        actual = "sha256:" + hasher.hexdigest()
        if wanted != actual:
            path.unlink(missing_ok=True)
            self._reply(400)
            return
        os.replace(path, self.state.blobs / actual.removeprefix("sha256:"))
        with self.state.lock:
            self.state.received[actual] = size
        self._reply(
            201,
            {
                "Docker-Content-Digest": actual,
                "Location": f"/v2/{match['name']}/blobs/{actual}",
            },
        )

    def _append(self, upload: str) -> int:
        with self.state.lock:
            path, digest, size = self.state.uploads[upload]
        with path.open("ab") as out:
            for chunk in self._body():
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        with self.state.lock:
            self.state.uploads[upload] = (path, digest, size)
        return size

    def _body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, CHUNK))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            chunk = self.rfile.read(min(remaining, CHUNK))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    @staticmethod
    def _upload_headers(name: str, upload: str, size: int) -> dict[str, str]:
        return {
            "Location": f"/v2/{name}/blobs/uploads/{upload}",
            "Docker-Upload-UUID": upload,
            "Range": f"0-{max(size - 1, 0)}",
        }

    def _reply(
        self, code: int, headers: dict[str, str] | None = None, *, length: int = 0
    ) -> None:
        self.send_response(code)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()


def collect_by_push(
    daemon: Daemon,
    image: str,
    diff_ids: list[str],
    base_layers: int,
    blobs: Path,
    base_sizes: list[int],
    withhold: set[str],
) -> Collected | None:
    """Let the daemon push to a sink here; None if that did not give every layer."""
    phase = {"phase": "extend run"}
    with BlobSink(blobs, withhold=withhold) as sink:
        ref = f"{sink.host}/imgext/extended-run:{uuid.uuid4().hex[:12]}"
        try:
            push(daemon, image, ref, log_level=logging.DEBUG)
        except ImgextError as exc:
            log.debug("push transfer failed, saving instead: %s", exc, extra=phase)
            return None
        finally:
            _forget_digest(daemon, image, sink.host)
        manifest = json.loads(sink.manifest or b"{}")
        received = sink.received
    layers = manifest.get("layers") or []
    config_digest = (manifest.get("config") or {}).get("digest")
    # The image ID is its config's digest, and the new layers are checked
    # against their diff IDs below: what the sink got is what the daemon holds,
    # whoever else on this machine talked to it meanwhile.
    if len(layers) != len(diff_ids) or config_digest != image:
        log.debug("the pushed manifest does not fit the image; saving", extra=phase)
        return None
    if config_digest not in received:
        log.debug("the daemon did not send the config; saving", extra=phase)
        return None
    new_blobs = []
    for index in range(base_layers, len(diff_ids)):
        digest = layers[index]["digest"]
        if digest not in received or _gunzip_digest(blobs, digest) != diff_ids[index]:
            # The daemon knew this layer's digest too (pushed before), so it
            # was never sent: only a save can give it.
            log.debug("layer %d did not come with the push; saving", index, extra=phase)
            return None
        new_blobs.append(Blob(diff_ids[index], digest, received[digest]))
    config_path = blobs / config_digest.removeprefix("sha256:")
    config = config_path.read_bytes()
    wanted = {b.digest for b in new_blobs}
    for digest in received:
        if digest not in wanted:
            # TODO: a daemon that lacked a base layer's digest uploaded it; it
            # is dropped, but it was written first (and compressed: slow).
            (blobs / digest.removeprefix("sha256:")).unlink(missing_ok=True)
    return Collected(config, base_sizes, new_blobs)


def _forget_digest(daemon: Daemon, image: str, host: str) -> None:
    # The daemon records `<sink>/...@sha256:` on the image after a push; that
    # registry is gone once the layout is written. Only while a tag still holds
    # the image, since dropping its last reference would delete it.
    info = daemon.inspect_image(image) or {}
    if not info.get("RepoTags"):
        return
    for ref in info.get("RepoDigests") or []:
        if ref.startswith(f"{host}/"):
            daemon.remove_tag(ref)


def _gunzip_digest(blobs: Path, digest: str) -> str:
    unpacker = zlib.decompressobj(31)
    diff = hashlib.sha256()
    with (blobs / digest.removeprefix("sha256:")).open("rb") as source:
        while chunk := source.read(CHUNK):
            diff.update(unpacker.decompress(chunk))
    diff.update(unpacker.flush())
    return f"sha256:{diff.hexdigest()}"
