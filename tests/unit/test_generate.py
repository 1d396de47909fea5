"""Generate on the host: outputs checked, run image selection, both layouts,
`analyzed.toml` and the files written."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgext import ExitCode, ExtensionError, ExtensionOutputError, Kind
from imgext._detect import Component, Element, Member, PlanEntry
from imgext._generate import (
    Output,
    RunImage,
    check_output,
    dumps_toml,
    generate,
    plan_for,
    select_run_image,
    update_analyzed,
    without_met,
    write_generated,
)
from imgext._generated import ExtensionDockerfile, GroupExtension, dockerfiles
from imgext._prepare import PrepareOptions, prepare
from imgext._runner import HostRunner, Target
from tests import cnb

BUILD = "ARG base_image\nFROM ${base_image}\nRUN true\n"
EXTEND = "ARG base_image\nFROM ${base_image}\nRUN true\n"


def output(tmp_path: Path, name: str, **files: str) -> Output:
    """Check an output folder; `build_Dockerfile` names build.Dockerfile,
    `context_run__f` the file context.run/f."""
    folder = tmp_path / "outputs" / name
    folder.mkdir(parents=True)
    for key, text in files.items():
        file_name = key.replace("__", "/").replace("_Dockerfile", ".Dockerfile")
        file_name = file_name.replace("context_run", "context.run")
        path = folder / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return check_output(name, folder)


def test_valid_outputs_are_parsed(tmp_path: Path) -> None:
    checked = output(tmp_path, "ext", build_Dockerfile=BUILD, run_Dockerfile=EXTEND)
    assert set(checked.dockerfiles) == {Kind.BUILD, Kind.RUN}
    assert checked.dockerfiles[Kind.RUN].extends


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"build_Dockerfile": "ARG base_image\nFROM ${base_image}\nFROM x\n"},
            "multistage",
        ),
        ({"build_Dockerfile": "FROM ${base_image}\n"}, "ARG"),
        ({"build_Dockerfile": "ARG base_image\nFROM ubuntu\n"}, "FROM ${base_image}"),
        (
            {"extend-config.toml": '[[build.args]]\nname = "user_id"\nvalue = "0"\n'},
            "reserved",
        ),
        ({"extend-config.toml": "[[build.args]\n"}, "cannot read"),
        ({"context__a": "x", "context_run__b": "y"}, "context/ cannot be used"),
    ],
)
def test_bad_outputs_name_the_extension(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    with pytest.raises(ExtensionOutputError) as failed:
        output(tmp_path, "ext/bad", **files)
    assert "extension ext/bad" in str(failed.value)
    assert message in str(failed.value)
    assert failed.value.exit_code == ExitCode.INVALID_EXTENSION_OUTPUT


def test_multistage_error_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "run.Dockerfile").write_text("FROM a\nRUN true\nFROM b\n")
    with pytest.raises(ExtensionOutputError) as failed:
        check_output("ext", folder, shown="/imgext/generate/out/ext")
    assert "/imgext/generate/out/ext/run.Dockerfile:3" in str(failed.value)


def test_run_image_selection_keeps_the_last_switch(tmp_path: Path) -> None:
    outputs = [
        output(tmp_path, "a", run_Dockerfile=EXTEND),
        output(tmp_path, "b", run_Dockerfile="FROM first\n"),
        output(tmp_path, "c", build_Dockerfile=BUILD),
        output(tmp_path, "d", run_Dockerfile="FROM second\nRUN true\n"),
        output(tmp_path, "e", run_Dockerfile=EXTEND),
    ]
    choice = select_run_image(outputs)
    assert choice == RunImage("second", extend=True)
    assert [o.ignore_run for o in outputs] == [True, True, False, False, False]


def test_run_image_selection_without_switch(tmp_path: Path) -> None:
    outputs = [output(tmp_path, "a", run_Dockerfile=EXTEND)]
    assert select_run_image(outputs) == RunImage(None, extend=True)
    assert select_run_image([]) == RunImage(None, extend=False)
    switch_only = [output(tmp_path, "b", run_Dockerfile="FROM other\n")]
    assert select_run_image(switch_only) == RunImage("other", extend=False)


ANALYZED: dict[str, Any] = {
    "build-image": {"reference": "build"},
    "run-image": {
        "reference": "old",
        "image": "old",
        "target": {"os": "linux", "arch": "amd64"},
    },
}


def test_a_new_run_image_replaces_reference_image_and_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="imgext"):
        data = update_analyzed(
            ANALYZED,
            RunImage("new", extend=True),
            platform_api=(0, 13),
            known_run_images=["old"],
        )
    assert data["run-image"] == {"reference": "new", "image": "new", "extend": True}
    assert data["build-image"] == {"reference": "build"}
    assert "not listed in run.toml" in caplog.text
    assert ANALYZED["run-image"]["image"] == "old"


def test_the_same_run_image_only_gains_extend() -> None:
    data = update_analyzed(
        ANALYZED,
        RunImage("old", extend=True),
        platform_api=(0, 13),
        known_run_images=None,
    )
    assert data["run-image"]["target"] == {"os": "linux", "arch": "amd64"}
    assert data["run-image"]["extend"] is True
    unchanged = update_analyzed(
        ANALYZED, RunImage(None, False), platform_api=(0, 13), known_run_images=None
    )
    assert unchanged == ANALYZED


def test_before_api_0_12_any_switch_rewrites_the_run_image() -> None:
    data = update_analyzed(
        ANALYZED,
        RunImage("old", extend=False),
        platform_api=(0, 11),
        known_run_images=None,
    )
    assert data["run-image"] == {"reference": "old", "image": "old"}


@pytest.mark.parametrize("api", [(0, 13), (0, 12)])
def test_both_layouts_read_back_as_extend_expects(
    tmp_path: Path, api: tuple[int, int]
) -> None:
    outputs = [
        output(tmp_path, "ext/a", run_Dockerfile=EXTEND),
        output(
            tmp_path,
            "ext/b",
            build_Dockerfile=BUILD,
            run_Dockerfile="FROM other\n",
            **{"extend-config.toml": '[[build.args]]\nname = "k"\nvalue = "v"\n'},
        ),
        output(tmp_path, "ext/c", run_Dockerfile=EXTEND, context_run__f="x"),
    ]
    select_run_image(outputs)
    generated = tmp_path / "generated"
    (generated / "stale").mkdir(parents=True)
    write_generated(outputs, generated, platform_api=api)
    assert not (generated / "stale").exists()
    if api >= (0, 13):
        assert (generated / "ext_a" / "run.Dockerfile.ignore").is_file()
        assert not (generated / "ext_a" / "run.Dockerfile").exists()
        assert (generated / "ext_c" / "context.run" / "f").is_file()
    else:
        assert (generated / "run" / "ext_a" / "Dockerfile.ignore").is_file()
        assert (generated / "build" / "ext_b" / "extend-config.toml").is_file()
        assert (generated / "run" / "ext_b" / "extend-config.toml").is_file()
    group = [GroupExtension(i, "1", "0.10") for i in ("ext/a", "ext/b", "ext/c")]
    app = tmp_path / "app"
    runs = dockerfiles(group, generated, Kind.RUN, app=app, platform_api=api)
    builds = dockerfiles(group, generated, Kind.BUILD, app=app, platform_api=api)
    assert [d.extension for d in runs] == ["ext/b", "ext/c"]
    assert [(d.extension, d.args) for d in builds] == [("ext/b", (("k", "v"),))]
    context = _context_of(runs[1])
    assert context == (generated / "ext_c" / "context.run" if api >= (0, 13) else app)


def _context_of(dockerfile: ExtensionDockerfile) -> Path:
    return dockerfile.context


def _member(name: str, extension: bool = True) -> Member:
    return cnb.member(name, optional=extension, extension=extension, has_generate=True)


def test_each_extension_gets_the_requirements_of_what_it_provided() -> None:
    plan = [
        PlanEntry("x", [_member("ext/a")], [{"name": "x", "metadata": {"v": "1"}}]),
        PlanEntry("y", [_member("ext/a"), _member("ext/b")], [{"name": "y"}]),
        PlanEntry("z", [_member("bp", extension=False)], [{"name": "z"}]),
    ]
    assert plan_for("ext/a", plan) == [
        {"name": "x", "metadata": {"v": "1"}},
        {"name": "y"},
    ]
    left = without_met(plan, {"x", "y"})
    # ext/b gets nothing once ext/a met y; buildpacks keep z.
    assert plan_for("ext/b", left) == []
    assert [e.name for e in left] == ["z"]


def test_failing_generate_stops_with_the_lifecycle_code(tmp_path: Path) -> None:
    extensions, buildpacks, order_path = cnb.sample_store(tmp_path)
    (tmp_path / "app").mkdir()
    with pytest.raises(ExtensionError) as failed:
        prepare(
            PrepareOptions(
                app=tmp_path / "app",
                layers=tmp_path / "layers",
                extensions=extensions,
                buildpacks=buildpacks,
                order=order_path,
                platform=cnb.platform(tmp_path / "platform", BP_REQUIRES="fails"),
            )
        )
    assert failed.value.exit_code == ExitCode.EXTENSION_FAILED
    assert "extension test/fails" in str(failed.value)
    assert "exit code 3" in str(failed.value)
    assert "cannot reach the package index" in failed.value.output


def test_generate_gets_the_arguments_and_environment_of_the_spec(
    tmp_path: Path,
) -> None:
    folder = cnb.component(
        tmp_path / "extensions",
        "extension",
        "ext/check",
        generate="""\
        [ "$1" = "$CNB_OUTPUT_DIR" ] || exit 11
        [ "$2" = "$CNB_PLATFORM_DIR" ] || exit 12
        [ "$3" = "$CNB_BP_PLAN_PATH" ] || exit 13
        [ -f "$CNB_EXTENSION_DIR/extension.toml" ] || exit 14
        grep -q 'name = "x"' "$3" || exit 15
        [ "$CNB_TARGET_OS" = linux ] || exit 16
        [ "$FROM_PLATFORM" = yes ] || exit 17
        printf 'ARG base_image\\nFROM ${base_image}\\n' >"$1/build.Dockerfile"
        """,
    )
    app = tmp_path / "app"
    app.mkdir()
    platform = cnb.platform(tmp_path / "platform", FROM_PLATFORM="yes")
    member = Member(
        Element("ext/check", "0.0.1", True, True),
        Component(
            kind="extension",
            id="ext/check",
            version="0.0.1",
            api="0.10",
            homepage="",
            clear_env=False,
            local=folder,
            root=str(folder),
            has_detect=False,
            has_generate=True,
        ),
    )
    plan = [PlanEntry("x", [member], [{"name": "x"}])]
    with HostRunner(app, platform, Target(arch="amd64")) as runner:
        outputs, left = generate(
            [member], plan, runner, platform_env=[("FROM_PLATFORM", "yes")]
        )
    assert left == []
    assert list(outputs[0].dockerfiles) == [Kind.BUILD]


def test_prepare_writes_what_the_lifecycle_writes(tmp_path: Path) -> None:
    extensions, buildpacks, order_path = cnb.sample_store(tmp_path)
    (tmp_path / "app").mkdir()
    layers = tmp_path / "layers"
    layers.mkdir()
    (layers / "analyzed.toml").write_text(
        '[run-image]\nreference = "imgext-test/run:tiny"\n'
        'image = "imgext-test/run:tiny"\n'
    )
    prepared = prepare(
        PrepareOptions(
            app=tmp_path / "app",
            layers=layers,
            extensions=extensions,
            buildpacks=buildpacks,
            order=order_path,
            platform=cnb.platform(
                tmp_path / "platform", BP_REQUIRES="run-switch,build-ext,run-ext"
            ),
        )
    )
    assert prepared.run_image == RunImage("imgext-test/run-alt:tiny", extend=True)
    group = tomllib.loads((layers / "group.toml").read_text())
    assert [e["id"] for e in group["group-extensions"]] == [
        "test/run-switch",
        "test/build-ext",
        "test/run-ext",
    ]
    assert [e["id"] for e in group["group"]] == ["test/requirer"]
    # Every requirement was met by an extension, so buildpacks get none.
    assert tomllib.loads((layers / "plan.toml").read_text()) == {"entries": []}
    analyzed = tomllib.loads((layers / "analyzed.toml").read_text())
    assert analyzed["run-image"] == {
        "reference": "imgext-test/run-alt:tiny",
        "image": "imgext-test/run-alt:tiny",
        "extend": True,
    }
    generated = layers / "generated"
    assert sorted(
        p.relative_to(generated).as_posix() for p in generated.rglob("*")
    ) == [
        "test_build-ext",
        "test_build-ext/build.Dockerfile",
        "test_build-ext/extend-config.toml",
        "test_run-ext",
        "test_run-ext/context.run",
        "test_run-ext/context.run/note.txt",
        "test_run-ext/run.Dockerfile",
        "test_run-switch",
        "test_run-switch/run.Dockerfile",
    ]
    config = (generated / "test_build-ext" / "extend-config.toml").read_text()
    assert 'value = "linux"' in config


SCALAR = st.one_of(
    st.text(max_size=5), st.integers(-5, 5), st.booleans(), st.lists(st.integers(0, 3))
)
KEY = st.text(min_size=1, max_size=6)
TABLE = st.recursive(
    st.dictionaries(KEY, SCALAR, max_size=3),
    lambda children: st.dictionaries(
        KEY,
        st.one_of(SCALAR, children, st.lists(children, min_size=1, max_size=2)),
        max_size=3,
    ),
    max_leaves=8,
)


@given(TABLE)
def test_written_toml_reads_back_the_same(data: dict[str, Any]) -> None:
    assert tomllib.loads(dumps_toml(data)) == data


def test_arrays_of_tables_are_written_as_blocks() -> None:
    text = dumps_toml({"group": [{"id": "a"}, {"id": "b"}]})
    assert text == '[[group]]\nid = "a"\n\n[[group]]\nid = "b"\n'
