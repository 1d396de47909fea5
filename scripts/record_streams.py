"""Record real /build streams of the daemon into tests/data/streams/.

Run it again when the daemon changes: `.venv/bin/python scripts/record_streams.py`.
Each file holds one decoded JSON event of the daemon's build stream per line,
exactly as the daemon sent it. The builds use imgext-test/run:tiny and tag
nothing that outlives the script.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import docker
from docker.utils import kwargs_from_env

BASE = "imgext-test/run:tiny"
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "streams"

OK = """\
ARG base_image
FROM ${base_image}
ARG build_id=0
USER root
RUN echo "installing hello" && for i in 1 2 3; do echo "line $i"; done
RUN echo "to stderr" >&2 && sleep 1
COPY greeting.txt /etc/greeting.txt
LABEL io.buildpacks.rebasable=true
USER 1000:1000
"""

FAILING = """\
ARG base_image
FROM ${base_image}
USER root
RUN echo "ok step"
RUN echo "fetching hello" && echo "E: Unable to locate package hello" >&2 && exit 3
USER 1000:1000
"""


def _context(dockerfile: str, salt: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in (
            ("Dockerfile", dockerfile),
            ("greeting.txt", f"hello {salt}\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _record(
    api: Any, name: str, dockerfile: str, version: str, salt: str, tag: str
) -> None:
    params = {
        "t": tag,
        "buildargs": json.dumps({"base_image": BASE}),
        "rm": True,
        "forcerm": True,
        "version": version,
    }
    response = api._post(
        api._url("/build"),
        data=_context(dockerfile, salt),
        params=params,
        headers={"Content-Type": "application/x-tar"},
        stream=True,
        timeout=None,
    )
    api._raise_for_status(response)
    events = list(api._stream_helper(response, decode=True))
    path = OUT / f"{name}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    print(f"{path}: {len(events)} events", file=sys.stderr)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    api = docker.APIClient(version="auto", **kwargs_from_env())
    salt = uuid.uuid4().hex
    tag = f"imgext-it/streams-{salt[:10]}:latest"
    try:
        for builder, version in (("buildkit", "2"), ("classic", "1")):
            # A fresh salt in the copied file makes the first build miss the
            # cache from COPY on; the same build again is all cached.
            salt = uuid.uuid4().hex
            _record(api, f"{builder}-ok", OK, version, salt, tag)
            _record(api, f"{builder}-cached", OK, version, salt, tag)
            _record(api, f"{builder}-failing", FAILING, version, salt, tag)
    finally:
        for image in api.images(filters={"reference": tag.split(":")[0]}):
            for repo_tag in image.get("RepoTags") or []:
                api.remove_image(repo_tag, noprune=True)


if __name__ == "__main__":
    main()
