"""The in-process registry of the push transfer, driven as the daemon drives it."""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Iterator
from pathlib import Path

from imgext._sink import BlobSink

DATA = b"layer bytes " * 5000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
KNOWN = "sha256:" + "1" * 64


def request(
    host: str,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(host, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_a_push_lands_in_the_blob_directory(tmp_path: Path) -> None:
    with BlobSink(tmp_path, withhold={DIGEST}) as sink:
        assert request(sink.host, "GET", "/v2/").status == 200
        head = request(sink.host, "HEAD", f"/v2/x/y/blobs/{KNOWN}")
        assert head.status == 200  # the daemon knows it: it need not send it
        assert request(sink.host, "HEAD", f"/v2/x/y/blobs/{DIGEST}").status == 404

        start = request(sink.host, "POST", "/v2/x/y/blobs/uploads/")
        assert start.status == 202
        location = start.headers["Location"]
        # A body of unknown length goes chunked, as Go's client sends it.
        patch = request(sink.host, "PATCH", location, iter([DATA[:999], DATA[999:]]))
        assert patch.status == 202
        put = request(
            sink.host, "PUT", f"{location}?digest={DIGEST.replace(':', '%3A')}"
        )
        assert put.status == 201
        assert put.headers["Docker-Content-Digest"] == DIGEST

        manifest = b'{"schemaVersion": 2}'
        assert request(sink.host, "PUT", "/v2/x/y/manifests/1", manifest).status == 201
        assert sink.manifest == manifest
        assert sink.received == {DIGEST: len(DATA)}
    assert (tmp_path / DIGEST.removeprefix("sha256:")).read_bytes() == DATA
    assert [p.name for p in tmp_path.iterdir()] == [DIGEST.removeprefix("sha256:")]


def test_an_upload_with_the_wrong_digest_is_refused(tmp_path: Path) -> None:
    with BlobSink(tmp_path) as sink:
        location = request(sink.host, "POST", "/v2/x/y/blobs/uploads/").headers[
            "Location"
        ]
        put = request(sink.host, "PUT", f"{location}?digest={KNOWN}", DATA)
        assert put.status == 400
        assert sink.received == {}
    assert list(tmp_path.iterdir()) == []
