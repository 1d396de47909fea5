"""Detection on the host: order files, group resolution, plans, environment."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgext import ExitCode, UsageError
from imgext._detect import (
    DetectionError,
    Detector,
    Element,
    ExtensionsOrder,
    Member,
    Sections,
    Store,
    _Failed,
    _read_plan,
    _trial,
    read_order,
)
from imgext._prepare import PrepareOptions, prepare
from imgext._runner import HostRunner, Target
from tests import cnb

TARGET = Target(os="linux", arch="amd64", distro_name="debian", distro_version="12")


def detect(
    root: Path,
    order_path: Path,
    *,
    env: dict[str, str] | None = None,
    api: tuple[int, int] = (0, 13),
) -> tuple[list[str], list[str], list[dict[str, object]]]:
    app = root / "app"
    app.mkdir(exist_ok=True)
    platform = cnb.platform(root / "platform", **(env or {}))
    with HostRunner(app, platform, TARGET) as runner:
        store = Store(root / "extensions", root / "buildpacks", runner)
        detector = Detector(
            store,
            runner,
            platform_env=sorted(
                (p.name, p.read_text()) for p in (platform / "env").iterdir()
            ),
            platform_api=api,
        )
        found = detector.detect(read_order(order_path))
    return (
        [m.element.id for m in found.extensions],
        [m.element.id for m in found.buildpacks],
        found.plan_toml()["entries"],
    )


def test_order_puts_the_extensions_order_first_in_every_group(tmp_path: Path) -> None:
    path = cnb.order(tmp_path / "order.toml", [["a", ("b", True)], ["c"]], ["x", "y"])
    groups = read_order(path)
    assert len(groups) == 2
    front = groups[0][0]
    assert isinstance(front, ExtensionsOrder)
    assert [e.id for e in front.order[0]] == ["x", "y"]
    assert all(e.optional and e.extension for e in front.order[0])
    assert groups[0][1:] == (Element("a", "0.0.1"), Element("b", "0.0.1", True))
    assert groups[1][0] is front


def test_order_without_extensions_is_just_buildpacks(tmp_path: Path) -> None:
    path = cnb.order(tmp_path / "order.toml", [["a"]])
    assert read_order(path) == [(Element("a", "0.0.1"),)]


def test_order_entries_need_an_id(tmp_path: Path) -> None:
    path = tmp_path / "order.toml"
    path.write_text('[[order]]\n[[order.group]]\nversion = "1"\n')
    with pytest.raises(UsageError, match="needs an id"):
        read_order(path)


def test_extensions_stay_only_when_a_buildpack_requires_them(tmp_path: Path) -> None:
    _, _, order_path = cnb.sample_store(tmp_path)
    extensions, buildpacks, entries = detect(
        tmp_path, order_path, env={"BP_REQUIRES": "run-ext,build-ext,run-switch"}
    )
    # test/never fails detect; test/unused and the others provide what nobody
    # requires here, so they are dropped; group order is kept.
    assert extensions == ["test/run-switch", "test/build-ext", "test/run-ext"]
    assert buildpacks == ["test/requirer"]
    by_name = {e["requires"][0]["name"]: e for e in entries}  # type: ignore[index]
    assert by_name["build-ext"] == {
        "providers": [
            {
                "id": "test/build-ext",
                "version": "0.0.1",
                "api": "0.10",
                "extension": True,
            }
        ],
        "requires": [{"name": "build-ext", "metadata": {"os": "linux"}}],
    }


def test_without_requirements_no_extension_takes_part(tmp_path: Path) -> None:
    _, _, order_path = cnb.sample_store(tmp_path)
    extensions, buildpacks, entries = detect(tmp_path, order_path)
    assert extensions == []
    assert buildpacks == ["test/requirer"]
    assert entries == []


def test_extension_writing_requires_is_an_error_and_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cnb.component(
        tmp_path / "extensions",
        "extension",
        "ext/greedy",
        detect=(
            'printf \'[[requires]]\\nname = "x"\\n\' >>"$2"\n'
            'printf \'[[provides]]\\nname = "x"\\n\' >>"$2"\n'
        ),
    )
    cnb.component(
        tmp_path / "buildpacks", "buildpack", "bp", detect=cnb.REQUIRER_DETECT
    )
    order_path = cnb.order(tmp_path / "order.toml", [["bp"]], ["ext/greedy"])
    # Without the extension the buildpack's requirement is unmet: no group.
    with (
        caplog.at_level(logging.WARNING, logger="imgext"),
        pytest.raises(DetectionError),
    ):
        detect(tmp_path, order_path, env={"BP_REQUIRES": "x"})
    assert 'extension ext/greedy outputs "requires"' in caplog.text


def test_extension_requires_error_does_not_block_other_groups(tmp_path: Path) -> None:
    cnb.component(
        tmp_path / "extensions",
        "extension",
        "ext/greedy",
        detect='printf \'[[requires]]\\nname = "x"\\n\' >>"$2"\n',
    )
    cnb.component(tmp_path / "buildpacks", "buildpack", "bp", detect="exit 0\n")
    order_path = cnb.order(tmp_path / "order.toml", [["bp"]], ["ext/greedy"])
    extensions, buildpacks, _ = detect(tmp_path, order_path)
    assert (extensions, buildpacks) == ([], ["bp"])


def test_the_first_group_that_passes_wins(tmp_path: Path) -> None:
    buildpacks = tmp_path / "buildpacks"
    cnb.component(buildpacks, "buildpack", "fails", detect="exit 100\n")
    cnb.component(buildpacks, "buildpack", "passes", detect="exit 0\n")
    cnb.component(buildpacks, "buildpack", "later", detect="exit 0\n")
    order_path = cnb.order(
        tmp_path / "order.toml", [["fails", "passes"], ["passes"], ["later"]]
    )
    assert detect(tmp_path, order_path)[1] == ["passes"]


def test_optional_buildpacks_that_fail_are_left_out(tmp_path: Path) -> None:
    buildpacks = tmp_path / "buildpacks"
    cnb.component(buildpacks, "buildpack", "maybe", detect="exit 100\n")
    cnb.component(buildpacks, "buildpack", "sure", detect="exit 0\n")
    order_path = cnb.order(tmp_path / "order.toml", [[("maybe", True), "sure"]])
    assert detect(tmp_path, order_path)[1] == ["sure"]


def test_a_group_needs_at_least_one_buildpack(tmp_path: Path) -> None:
    cnb.component(tmp_path / "extensions", "extension", "ext/a", detect="exit 0\n")
    cnb.component(tmp_path / "buildpacks", "buildpack", "bp", detect="exit 100\n")
    order_path = cnb.order(tmp_path / "order.toml", [[("bp", True)]], ["ext/a"])
    with pytest.raises(DetectionError) as failed:
        detect(tmp_path, order_path)
    assert failed.value.exit_code == ExitCode.DETECT_FAILED


def test_an_error_exit_code_fails_with_the_lifecycle_code(tmp_path: Path) -> None:
    cnb.component(tmp_path / "buildpacks", "buildpack", "bp", detect="exit 7\n")
    order_path = cnb.order(tmp_path / "order.toml", [["bp"]])
    with pytest.raises(DetectionError) as failed:
        detect(tmp_path, order_path)
    assert failed.value.exit_code == ExitCode.DETECT_ERRORED


def test_or_alternatives_are_tried_in_order(tmp_path: Path) -> None:
    buildpacks = tmp_path / "buildpacks"
    # "first" needs node, which nobody provides; its alternative provides it.
    cnb.component(
        buildpacks,
        "buildpack",
        "first",
        detect="""\
        cat >>"$2" <<'EOF'
        [[requires]]
        name = "node"
        [[or]]
        [[or.provides]]
        name = "node"
        [[or.requires]]
        name = "node"
        EOF
        """,
    )
    order_path = cnb.order(tmp_path / "order.toml", [["first"]])
    _, buildpacks_found, entries = detect(tmp_path, order_path)
    assert buildpacks_found == ["first"]
    assert [e["requires"] for e in entries] == [[{"name": "node"}]]


def test_unmet_requirement_of_a_required_buildpack_fails_the_group(
    tmp_path: Path,
) -> None:
    cnb.component(
        tmp_path / "buildpacks",
        "buildpack",
        "needy",
        detect='printf \'[[requires]]\\nname = "x"\\n\' >>"$2"\n',
    )
    order_path = cnb.order(tmp_path / "order.toml", [["needy"]])
    with pytest.raises(DetectionError):
        detect(tmp_path, order_path)


def test_composite_buildpacks_are_resolved(tmp_path: Path) -> None:
    buildpacks = tmp_path / "buildpacks"
    cnb.component(buildpacks, "buildpack", "inner-a", detect="exit 100\n")
    cnb.component(buildpacks, "buildpack", "inner-b", detect="exit 0\n")
    cnb.component(
        buildpacks,
        "buildpack",
        "meta",
        extra="""
        [[order]]
        [[order.group]]
        id = "inner-a"
        version = "0.0.1"
        [[order]]
        [[order.group]]
        id = "inner-b"
        version = "0.0.1"
        """,
    )
    order_path = cnb.order(tmp_path / "order.toml", [["meta"]])
    assert detect(tmp_path, order_path)[1] == ["inner-b"]


def _composite(buildpacks: Path, name: str, *inner: str) -> None:
    groups = "".join(
        f'[[order]]\n[[order.group]]\nid = "{i}"\nversion = "0.0.1"\n' for i in inner
    )
    cnb.component(buildpacks, "buildpack", name, extra=groups)


def test_a_composite_that_contains_itself_is_refused(tmp_path: Path) -> None:
    buildpacks = tmp_path / "buildpacks"
    cnb.component(buildpacks, "buildpack", "leaf", detect="exit 0\n")
    # outer -> middle -> (missing, leaf, outer): the cycle is found past a
    # buildpack that is not there and a plain one.
    _composite(buildpacks, "outer", "middle")
    _composite(buildpacks, "middle", "missing", "leaf", "outer")
    order_path = cnb.order(tmp_path / "order.toml", [["outer"]])
    with pytest.raises(UsageError) as refused:
        detect(tmp_path, order_path)
    assert refused.value.exit_code == ExitCode.USAGE
    assert str(refused.value) == (
        "composite buildpack outer@0.0.1 contains itself: "
        "outer@0.0.1 -> middle@0.0.1 -> outer@0.0.1"
    )


def test_a_composite_used_twice_is_no_cycle(tmp_path: Path) -> None:
    buildpacks = tmp_path / "buildpacks"
    cnb.component(buildpacks, "buildpack", "leaf", detect="exit 0\n")
    _composite(buildpacks, "shared", "leaf")
    _composite(buildpacks, "first", "shared")
    order_path = cnb.order(tmp_path / "order.toml", [["first", "shared"]])
    assert detect(tmp_path, order_path)[1] == ["leaf"]


def test_detect_gets_the_arguments_and_environment_of_the_spec(tmp_path: Path) -> None:
    cnb.component(
        tmp_path / "buildpacks",
        "buildpack",
        "checker",
        detect="""\
        [ "$1" = "$CNB_PLATFORM_DIR" ] || { echo "platform arg" >&2; exit 1; }
        [ "$2" = "$CNB_BUILD_PLAN_PATH" ] || { echo "plan arg" >&2; exit 2; }
        [ -f "$2" ] || exit 3
        [ "$(pwd -P)" = "$(cd "$CNB_BUILDPACK_DIR/../../../app" && pwd -P)" ] || exit 4
        [ -f "$CNB_BUILDPACK_DIR/buildpack.toml" ] || exit 5
        [ "$CNB_TARGET_OS/$CNB_TARGET_ARCH" = linux/amd64 ] || exit 6
        [ "$CNB_TARGET_DISTRO_NAME $CNB_TARGET_DISTRO_VERSION" = "debian 12" ] || exit 7
        [ "$FROM_PLATFORM" = "a value" ] || exit 8
        [ "${UNRELATED_HOST_VARIABLE:-}" = "" ] || exit 9
        """,
    )
    order_path = cnb.order(tmp_path / "order.toml", [["checker"]])
    monkey = pytest.MonkeyPatch()
    monkey.setenv("UNRELATED_HOST_VARIABLE", "leak")
    try:
        assert detect(tmp_path, order_path, env={"FROM_PLATFORM": "a value"})[1] == [
            "checker"
        ]
    finally:
        monkey.undo()


def test_clear_env_keeps_platform_variables_out(tmp_path: Path) -> None:
    cnb.component(
        tmp_path / "buildpacks",
        "buildpack",
        "clean",
        detect='[ -z "${BP_REQUIRES:-}" ] || exit 1\n',
        extra="clear-env = true\n",
    )
    # A descriptor key after the table header lands in [buildpack].
    descriptor = tmp_path / "buildpacks" / "clean" / "0.0.1" / "buildpack.toml"
    assert "clear-env" in descriptor.read_text()
    order_path = cnb.order(tmp_path / "order.toml", [["clean"]])
    assert detect(tmp_path, order_path, env={"BP_REQUIRES": "x"})[1] == ["clean"]


def test_path_like_platform_variables_are_prefixed(tmp_path: Path) -> None:
    cnb.component(
        tmp_path / "buildpacks",
        "buildpack",
        "pathy",
        detect='case "$PATH" in /opt/extra:?*) exit 0 ;; *) exit 1 ;; esac\n',
    )
    order_path = cnb.order(tmp_path / "order.toml", [["pathy"]])
    assert detect(tmp_path, order_path, env={"PATH": "/opt/extra"})[1] == ["pathy"]


def test_target_mismatch_is_an_error_for_required_buildpacks(tmp_path: Path) -> None:
    cnb.component(
        tmp_path / "buildpacks",
        "buildpack",
        "windows-only",
        detect="exit 0\n",
        extra='\n[[targets]]\nos = "windows"\n',
    )
    order_path = cnb.order(tmp_path / "order.toml", [["windows-only"]])
    with pytest.raises(DetectionError) as failed:
        detect(tmp_path, order_path)
    assert failed.value.errored
    # Before platform API 0.12 targets are not checked.
    assert detect(tmp_path, order_path, api=(0, 11))[1] == ["windows-only"]


def test_missing_buildpack_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "buildpacks").mkdir()
    order_path = cnb.order(tmp_path / "order.toml", [["ghost"]])
    with pytest.raises(UsageError, match="ghost"):
        detect(tmp_path, order_path)


def test_static_plan_of_an_extension_without_bin_detect(tmp_path: Path) -> None:
    cnb.component(
        tmp_path / "extensions",
        "extension",
        "ext/static",
        static_plan='[[provides]]\nname = "x"\n',
    )
    cnb.component(
        tmp_path / "buildpacks",
        "buildpack",
        "bp",
        detect='printf \'[[requires]]\\nname = "x"\\n\' >>"$2"\n',
    )
    order_path = cnb.order(tmp_path / "order.toml", [["bp"]], ["ext/static"])
    extensions, _, entries = detect(tmp_path, order_path)
    assert extensions == ["ext/static"]
    assert entries[0]["providers"][0]["extension"] is True  # type: ignore[index]


def _member(name: str, *, optional: bool = False, extension: bool = False) -> Member:
    return cnb.member(name, optional=optional, extension=extension)


NAMES = st.sampled_from(["a", "b", "c"])


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.lists(NAMES, max_size=2),
            st.lists(NAMES, max_size=2),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_resolved_trial_has_every_dependency_provided_before_required(
    members: list[tuple[bool, list[str], list[str]]],
) -> None:
    trial = [
        (
            _member(f"m{i}", optional=optional),
            Sections(tuple({"name": r} for r in requires), tuple(provides)),
        )
        for i, (optional, requires, provides) in enumerate(members)
    ]
    try:
        chosen, plan = _trial(trial)
    except _Failed:
        return
    kept = {m.element.id for m in chosen}
    # Only optional members are ever dropped, and order is preserved.
    assert all(m.element.optional for m, _ in trial if m.element.id not in kept)
    assert [m.element.id for m in chosen] == [
        m.element.id for m, _ in trial if m.element.id in kept
    ]
    for entry in plan:
        assert entry.providers and entry.requires
        assert {p.element.id for p in entry.providers} <= kept


TOML_NAME = st.text(
    alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1
)


@given(
    st.lists(TOML_NAME, max_size=3),
    st.lists(TOML_NAME, max_size=3),
    st.lists(st.lists(TOML_NAME, max_size=2), max_size=2),
)
def test_plans_are_read_with_their_alternatives(
    requires: list[str], provides: list[str], alternatives: list[list[str]]
) -> None:
    text = "".join(f'[[requires]]\nname = "{n}"\n' for n in requires)
    text += "".join(f'[[provides]]\nname = "{n}"\n' for n in provides)
    for alternative in alternatives:
        text += "[[or]]\n" + "".join(
            f'[[or.provides]]\nname = "{n}"\n' for n in alternative
        )
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.toml"
        path.write_text(text)
        run = _read_plan(path, _member("bp").component, "")
    assert run.code == 0
    assert [r["name"] for r in run.alternatives[0].requires] == requires
    assert list(run.alternatives[0].provides) == provides
    assert [list(a.provides) for a in run.alternatives[1:]] == alternatives


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[requires]\n", "cannot read"),
        ("requires = 3\n", "array of tables"),
        ("[[provides]]\nversion = '1'\n", "needs a name"),
        (
            "[[requires]]\nname = 'x'\nversion = '1'\n"
            "[requires.metadata]\nversion = '2'\n",
            "metadata.version",
        ),
    ],
)
def test_bad_plans_are_detect_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    run = _read_plan(path, _member("bp").component, "")
    assert run.code == -1
    assert run.error is not None and message in run.error


def test_build_config_reaches_even_a_clear_env_buildpack(tmp_path: Path) -> None:
    cnb.component(
        tmp_path / "buildpacks",
        "buildpack",
        "config-user",
        extra="clear-env = true\n",
        detect="""\
        [ "${FROM_CONFIG:-}" = yes ] || exit 1
        [ -z "${FROM_PLATFORM:-}" ] || exit 2
        """,
    )
    config = tmp_path / "build-config"
    (config / "env").mkdir(parents=True)
    (config / "env" / "FROM_CONFIG").write_text("yes")
    (tmp_path / "app").mkdir()
    options = PrepareOptions(
        app=tmp_path / "app",
        layers=tmp_path / "layers",
        buildpacks=tmp_path / "buildpacks",
        extensions=tmp_path / "extensions",
        order=cnb.order(tmp_path / "order.toml", [["config-user"]]),
        platform=cnb.platform(tmp_path / "platform", FROM_PLATFORM="p"),
        build_config=config,
        build_image="imgext-test/build:tiny",
        run_image="imgext-test/run:tiny",
    )
    prepared = prepare(options)
    assert [m.element.id for m in prepared.detected.buildpacks] == ["config-user"]
    with pytest.raises(DetectionError):
        prepare(dataclasses.replace(options, build_config=tmp_path / "none"))


def test_buildpacks_before_api_0_8_get_no_path_variables(tmp_path: Path) -> None:
    for name, api in (("old", "0.7"), ("new", "0.8")):
        cnb.component(
            tmp_path / "buildpacks",
            "buildpack",
            name,
            api=api,
            detect=f"""\
            env >"$1/../seen-{name}"
            """,
        )
    order_path = cnb.order(tmp_path / "order.toml", [["old", "new"]])
    detect(tmp_path, order_path)
    old = (tmp_path / "seen-old").read_text()
    new = (tmp_path / "seen-new").read_text()
    assert "CNB_PLATFORM_DIR=" not in old and "CNB_BUILD_PLAN_PATH=" not in old
    assert "CNB_BUILDPACK_DIR=" in old
    assert "CNB_PLATFORM_DIR=" in new and "CNB_BUILD_PLAN_PATH=" in new
