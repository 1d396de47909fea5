from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from imgext import ExtensionOutputError
from imgext._dockerfile import REBASABLE_LABEL, Kind, parse

PATH = Path("generated/ext/build.Dockerfile")


def build(text: str):  # type: ignore[no-untyped-def]
    return parse(text, path=PATH, kind=Kind.BUILD, extension="my/ext")


def run(text: str):  # type: ignore[no-untyped-def]
    return parse(text, path=PATH, kind=Kind.RUN, extension="my/ext")


def test_valid_build_dockerfile() -> None:
    parsed = build("ARG base_image\nFROM ${base_image}\nRUN echo hi\n")
    assert parsed.base == "${base_image}"
    assert not parsed.switches
    assert parsed.extends
    assert [i.command for i in parsed.instructions] == ["ARG", "FROM", "RUN"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("FROM ${base_image}\n", 1, "did not start with required ARG"),
        ("ARG other\nFROM ${base_image}\n", 1, "did not start with required ARG"),
        (
            "ARG base_image\nARG more\nFROM ${base_image}\n",
            1,
            "did not start with required ARG",
        ),
        ("ARG base_image\nFROM busybox\n", 2, "required FROM ${base_image}"),
        (
            "ARG base_image\nFROM ${base_image}\nRUN x\nFROM ${base_image}\n",
            4,
            "not permitted to use multistage build",
        ),
        ("ARG base_image\n", None, "should have at least one stage"),
        (
            "ARG base_image\nFROM ${base_image}\nCOPY --from=0 /a /b\n",
            3,
            "COPY --from a build stage",
        ),
    ],
)
def test_invalid_build_dockerfiles_name_extension_file_and_line(
    text: str, line: int | None, words: str
) -> None:
    with pytest.raises(ExtensionOutputError) as caught:
        build(text)
    error = caught.value
    assert words in str(error)
    assert error.extension == "my/ext"
    assert error.path == str(PATH)
    assert error.line == line
    assert "extension my/ext" in str(error)
    if line:
        assert f"{PATH}:{line}" in str(error)


def test_parse_error_names_extension_and_file() -> None:
    with pytest.raises(ExtensionOutputError) as caught:
        run("ARG base_image\nFROM ${base_image}\nRUN <<EOF\nabc\n")
    assert "cannot parse run Dockerfile" in str(caught.value)
    assert f"extension my/ext, {PATH}" in str(caught.value)


def test_from_without_image_is_an_error() -> None:
    with pytest.raises(ExtensionOutputError) as caught:
        run("FROM\n")
    assert caught.value.line == 1


def test_run_dockerfile_may_switch_and_extend() -> None:
    switch = run("FROM registry.example/other:1\n")
    assert switch.switches
    assert not switch.extends
    both = run("ARG x\nFROM other:2\nUSER 1000\n")
    assert both.switches
    assert both.extends
    plain = run("ARG base_image\nFROM ${base_image}\nUSER 1000\n")
    assert not plain.switches


def test_instructions_outside_the_list_only_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="imgext"):
        parsed = run('ARG base_image\nFROM ${base_image}\nEXPOSE 80\nCMD ["x"]\n')
    assert parsed.extends
    messages = [r.getMessage() for r in caplog.records]
    assert any("EXPOSE" in m and ":3" in m and "my/ext" in m for m in messages)
    assert any("CMD" in m and ":4" in m for m in messages)


def test_run_dockerfile_must_declare_base_image_arg() -> None:
    with pytest.raises(ExtensionOutputError, match="without declaring") as caught:
        run("FROM ${base_image}\nRUN true\n")
    assert caught.value.line == 1


def test_sets_label_reads_quoted_and_multi_keys() -> None:
    parsed = run(
        "ARG base_image\nFROM ${base_image}\n"
        'LABEL a=b "io.buildpacks.rebasable"="true" c=d\n'
    )
    assert parsed.sets_label(REBASABLE_LABEL)
    assert not run("ARG base_image\nFROM ${base_image}\nLABEL a=b\n").sets_label(
        REBASABLE_LABEL
    )


def test_reads_context_only_for_copy_and_add_from_the_context() -> None:
    assert run("ARG base_image\nFROM ${base_image}\nCOPY a /a\n").reads_context
    assert run("ARG base_image\nFROM ${base_image}\nADD a /a\n").reads_context
    assert not run(
        "ARG base_image\nFROM ${base_image}\nCOPY --from=img:1 /a /a\n"
    ).reads_context
    assert not run("ARG base_image\nFROM ${base_image}\nRUN true\n").reads_context


def test_find_run_matches_the_shell_command() -> None:
    parsed = run("ARG base_image\nFROM ${base_image}\nRUN echo a \\\n  && false\n")
    found = parsed.find_run("echo a   && false")
    assert found is not None and found.line == 3


_ALLOWED = st.sampled_from(
    ["RUN echo x", "ENV A=b", "LABEL k=v", "USER 1000", "WORKDIR /w", "ARG z=1"]
)


@given(st.lists(_ALLOWED, max_size=8))
def test_any_allowed_body_is_valid(body: list[str]) -> None:
    text = "ARG base_image\nFROM ${base_image}\n" + "".join(f"{i}\n" for i in body)
    parsed = build(text)
    assert parsed.extends == bool(body)
    assert [i.line for i in parsed.instructions] == list(range(1, len(body) + 3))


@example("ARG base_image\nFROM ${base_image}\n\\")
@example("\\")
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200))
def test_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(ExtensionOutputError):
        run(text)
