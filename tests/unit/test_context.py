from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from imgext._context import coalesce, dockerfile_name, stream, stream_dockerfile_only

DOCKERFILE = b"ARG base_image\nFROM ${base_image}\nCOPY . /app\n"


def read(chunks: list[bytes]) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    members = {}
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member) if member.isfile() else None
            members[member.name] = (member, handle.read() if handle else b"")
    return members


def test_context_holds_files_dirs_links_and_the_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_bytes(b"x" * 1000)
    (tmp_path / "exec").write_text("#!/bin/sh\n")
    (tmp_path / "exec").chmod(0o755)
    outside = tmp_path.parent / "outside-secret"
    outside.write_text("secret")
    (tmp_path / "link").symlink_to(outside)
    (tmp_path / "dirlink").symlink_to(tmp_path.parent)
    name = dockerfile_name(DOCKERFILE)
    members = read(list(stream(tmp_path, DOCKERFILE, name)))
    assert members[name][1] == DOCKERFILE
    assert name in members[".dockerignore"][1].decode().splitlines()
    assert members["dir"][0].isdir()
    assert members["dir/file"][1] == b"x" * 1000
    assert members["exec"][0].mode == 0o755
    # Links travel as links: nothing outside the context is read or sent.
    assert members["link"][0].issym()
    assert members["link"][0].linkname == str(outside)
    assert members["dirlink"][0].issym()
    assert not any(b"secret" in data for _, data in members.values())
    assert all(m.uid == 0 and m.gid == 0 for m, _ in members.values())


def test_dockerignore_patterns_apply_and_are_kept(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("# comment\n*.log\nbuild\n!build/keep\n")
    (tmp_path / "a.log").write_text("no")
    (tmp_path / "b.txt").write_text("yes")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "drop").write_text("no")
    (tmp_path / "build" / "keep").write_text("yes")
    name = dockerfile_name(DOCKERFILE)
    members = read(list(stream(tmp_path, DOCKERFILE, name)))
    assert "a.log" not in members
    assert "build/drop" not in members
    assert members["build/keep"][1] == b"yes"
    assert members["b.txt"][1] == b"yes"
    sent = members[".dockerignore"][1].decode().splitlines()
    assert sent[:3] == ["*.log", "build", "!build/keep"]
    assert sent[-2:] == [name, ".dockerignore"]


def test_dockerfile_only_context() -> None:
    name = dockerfile_name(DOCKERFILE)
    members = read(list(stream_dockerfile_only(DOCKERFILE, name)))
    assert set(members) == {name, ".dockerignore"}


def test_dockerfile_name_is_stable_per_content() -> None:
    assert dockerfile_name(b"a") == dockerfile_name(b"a")
    assert dockerfile_name(b"a") != dockerfile_name(b"b")


def test_stream_is_lazy(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as out:
        out.truncate(8 << 20)
    chunks = stream(tmp_path, DOCKERFILE, "Dockerfile")
    first = next(chunks)
    assert len(first) < (2 << 20)


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=3000), max_size=20), st.integers(1, 5000))
def test_coalesce_keeps_bytes_and_order(chunks: list[bytes], size: int) -> None:
    joined = list(coalesce(iter(chunks), size))
    assert b"".join(joined) == b"".join(chunks)
    assert all(len(c) >= size for c in joined[:-1])


def test_files_with_odd_sizes_are_padded(tmp_path: Path) -> None:
    for size in (0, 1, 511, 512, 513, 4097):
        (tmp_path / f"f{size}").write_bytes(os.urandom(size))
    members = read(list(stream(tmp_path, DOCKERFILE, "Dockerfile")))
    for size in (0, 1, 511, 512, 513, 4097):
        assert len(members[f"f{size}"][1]) == size
