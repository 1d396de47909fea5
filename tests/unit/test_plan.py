from __future__ import annotations

from pathlib import Path

import pytest

from imgext import ExtendOptions, ExtensionOutputError, Kind, UsageError, plan
from imgext._extend import default_tag

from ..conftest import Layers

BUILD = "ARG base_image\nFROM ${{base_image}}\nRUN echo {n}\n"
RUN = "ARG base_image\nFROM ${{base_image}}\nRUN echo {n}\n"


def options(layers: Layers, **changes: object) -> ExtendOptions:
    return ExtendOptions(
        layers=layers.root,
        app=layers.app,
        platform_api=layers.platform_api,
        **changes,  # type: ignore[arg-type]
    )


def test_dockerfiles_follow_group_order_and_skip_missing_kinds(
    layers: Layers,
) -> None:
    layers.analyzed("build:1", "run:1")
    layers.extension("z/first", build=BUILD.format(n=1))
    layers.extension("a/second", run=RUN.format(n=2))
    layers.extension("m/third", build=BUILD.format(n=3), run=RUN.format(n=3))
    plans = {p.kind: p for p in plan(options(layers))}
    assert [d.extension for d in plans[Kind.BUILD].dockerfiles] == [
        "z/first",
        "m/third",
    ]
    assert [d.extension for d in plans[Kind.RUN].dockerfiles] == [
        "a/second",
        "m/third",
    ]
    assert plans[Kind.BUILD].base == "build:1"
    assert plans[Kind.RUN].tag == "run:1-extended"


@pytest.mark.parametrize("api", ["0.10", "0.12"])
def test_older_platform_api_reads_the_older_layout(tmp_path: Path, api: str) -> None:
    layers = Layers(tmp_path / "layers", platform_api=api)
    layers.analyzed("b:1", "r:1")
    layers.extension("x/y", build=BUILD.format(n=1), run=RUN.format(n=1))
    assert (layers.generated / "build" / "x_y" / "Dockerfile").is_file()
    plans = plan(options(layers))
    assert [len(p.dockerfiles) for p in plans] == [1, 1]
    # The app directory is always the context in the older layout.
    assert all(p.dockerfiles[0].context == layers.app for p in plans)


def test_ignored_and_superseded_run_dockerfiles_are_skipped(layers: Layers) -> None:
    layers.analyzed("b:1", "r:1")
    first = layers.extension("one", run=RUN.format(n=1))
    (first / "run.Dockerfile").rename(first / "run.Dockerfile.ignore")
    layers.extension("two", run=RUN.format(n=2))
    layers.extension("switch", run="FROM other/run:2\n")
    layers.extension("after", run=RUN.format(n=4))
    (run_plan,) = plan(options(layers, kinds=(Kind.RUN,)))
    # A pure switch adds nothing to build: it only changes the base.
    assert run_plan.base == "other/run:2"
    assert [d.extension for d in run_plan.dockerfiles] == ["after"]


def test_switch_that_also_extends_is_applied(layers: Layers) -> None:
    layers.analyzed("b:1", "r:1")
    layers.extension("switch", run="FROM other/run:2\nUSER 1000\n")
    (run_plan,) = plan(options(layers, kinds=(Kind.RUN,)))
    assert run_plan.base == "other/run:2"
    assert [d.extension for d in run_plan.dockerfiles] == ["switch"]


def test_flags_override_analyzed_and_tags(layers: Layers) -> None:
    layers.analyzed("b:1", "r:1")
    layers.extension("e", build=BUILD.format(n=1))
    (build_plan,) = plan(options(layers, build_image="mine:2", build_tag="out:3"))
    assert (build_plan.base, build_plan.tag) == ("mine:2", "out:3")


def test_missing_base_image_is_a_usage_error(layers: Layers) -> None:
    layers.extension("e", build=BUILD.format(n=1))
    with pytest.raises(UsageError, match="no build image"):
        plan(options(layers))


def test_missing_group_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="group file not found"):
        plan(ExtendOptions(layers=tmp_path))


def test_reserved_args_are_rejected(layers: Layers) -> None:
    layers.analyzed("b:1", "r:1")
    layers.extension("e", build=BUILD.format(n=1), build_args={"user_id": "0"})
    with pytest.raises(ExtensionOutputError, match="'user_id' is reserved") as caught:
        plan(options(layers))
    assert caught.value.extension == "e"
    assert str(caught.value.path).endswith("extend-config.toml")


def test_args_are_read_per_kind(layers: Layers) -> None:
    layers.analyzed("b:1", "r:1")
    layers.extension(
        "e",
        build=BUILD.format(n=1),
        run=RUN.format(n=1),
        build_args={"a": "1", "b": "two words"},
        run_args={"c": "3"},
    )
    plans = {p.kind: p for p in plan(options(layers))}
    assert plans[Kind.BUILD].dockerfiles[0].args == (("a", "1"), ("b", "two words"))
    assert plans[Kind.RUN].dockerfiles[0].args == (("c", "3"),)


def test_context_folders(layers: Layers) -> None:
    layers.analyzed("b:1", "r:1")
    folder = layers.extension("e", build=BUILD.format(n=1), run=RUN.format(n=1))
    (folder / "context.run").mkdir()
    plans = {p.kind: p for p in plan(options(layers))}
    assert plans[Kind.BUILD].dockerfiles[0].context == layers.app
    assert plans[Kind.RUN].dockerfiles[0].context == folder / "context.run"
    (folder / "context.run").rmdir()
    (folder / "context").mkdir()
    plans = {p.kind: p for p in plan(options(layers))}
    assert {p.dockerfiles[0].context for p in plans.values()} == {folder / "context"}
    (folder / "context.build").mkdir()
    with pytest.raises(ExtensionOutputError, match="context/ cannot be used"):
        plan(options(layers))


@pytest.mark.parametrize(
    ("base", "tag"),
    [
        ("run:1", "run:1-extended"),
        ("registry:5000/stack/run", "registry:5000/stack/run:latest-extended"),
        ("registry:5000/run:jammy", "registry:5000/run:jammy-extended"),
        ("repo/run@sha256:" + "a" * 64, "repo/run:latest-extended"),
        ("sha256:" + "b" * 64, "imgext/extended:bbbbbbbbbbbb"),
    ],
)
def test_default_tag_never_is_the_base_tag(base: str, tag: str) -> None:
    assert default_tag(base) == tag
    assert default_tag(base) != base


def test_invalid_platform_api(layers: Layers) -> None:
    with pytest.raises(UsageError, match=r"0\.10 or later"):
        plan(ExtendOptions(layers=layers.root, platform_api="0.9"))
    with pytest.raises(UsageError, match="X\\.Y"):
        plan(ExtendOptions(layers=layers.root, platform_api="latest"))
