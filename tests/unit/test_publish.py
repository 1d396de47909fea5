"""Reading the daemon's push stream, without a daemon."""

from __future__ import annotations

from typing import Any

import pytest

from imgext import RegistryError, UsageError
from imgext._publish import _read_push_stream, _scrub, _split

DIGEST = "sha256:" + "ab" * 32


def events(*items: dict[str, Any]) -> Any:
    return iter(items)


def test_counts_what_each_layer_needed_and_takes_the_digest() -> None:
    pushed = _read_push_stream(
        events(
            {"status": "The push refers to repository [r/x]"},
            {"status": "Preparing", "id": "a"},
            {"status": "Layer already exists", "id": "a"},
            {"status": "Mounted from other/repo", "id": "b"},
            {"status": "Pushing", "id": "c", "progressDetail": {"current": 1}},
            {"status": "Pushed", "id": "c"},
            {"status": f"1: digest: {DIGEST} size: 943"},
            {"aux": {"Tag": "1", "Digest": DIGEST, "Size": 943}},
        ),
        "r/x:1",
        None,
    )
    assert pushed.digest == DIGEST and pushed.size == 943
    assert pushed.uploaded == 1
    assert pushed.layers == {"Layer already exists": 1, "Mounted": 1, "Pushed": 1}


def test_an_error_inside_the_stream_is_a_registry_error() -> None:
    stream = events(
        {"status": "Preparing", "id": "a"},
        {
            "errorDetail": {"message": "unauthorized: authentication required"},
            "error": "unauthorized: authentication required",
        },
    )
    with pytest.raises(RegistryError, match="unauthorized") as caught:
        _read_push_stream(stream, "r/x:1", None)
    assert caught.value.exit_code == 105


def test_a_stream_without_a_digest_is_an_error() -> None:
    with pytest.raises(RegistryError, match="without a digest"):
        _read_push_stream(events({"status": "Pushed", "id": "a"}), "r/x:1", None)


def test_credentials_in_urls_are_scrubbed() -> None:
    text = "Get https://bob:hunter2@registry.example/v2/: EOF"
    assert _scrub(text) == "Get https://***@registry.example/v2/: EOF"


def test_refs_need_a_tag_not_a_digest() -> None:
    assert _split("127.0.0.1:5000/app") == ("127.0.0.1:5000/app", "latest")
    assert _split("127.0.0.1:5000/app:v1") == ("127.0.0.1:5000/app", "v1")
    with pytest.raises(UsageError):
        _split(f"registry.example/app@{DIGEST}")
