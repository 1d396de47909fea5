"""Make buildpacks, extensions and order files on disk, for detect and generate
tests: host folders, and the context of a builder image made from them."""

from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

from imgext._detect import Component, Element, Member


def component(
    root: Path,
    kind: str,
    component_id: str,
    *,
    version: str = "0.0.1",
    api: str = "0.10",
    detect: str | None = None,
    generate: str | None = None,
    static_plan: str | None = None,
    static_output: dict[str, str] | None = None,
    extra: str = "",
) -> Path:
    """Write `<root>/<id, / as _>/<version>/` with its descriptor and scripts."""
    folder = root / component_id.replace("/", "_") / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{kind}.toml").write_text(
        f'api = "{api}"\n\n[{kind}]\nid = "{component_id}"\nversion = "{version}"\n'
        + textwrap.dedent(extra)
    )
    for name, script in (("detect", detect), ("generate", generate)):
        if script is None:
            continue
        path = folder / "bin" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("#!/bin/sh\nset -eu\n" + textwrap.dedent(script).lstrip())
        path.chmod(0o755)
    if static_plan is not None:
        (folder / "detect").mkdir(exist_ok=True)
        (folder / "detect" / "plan.toml").write_text(textwrap.dedent(static_plan))
    for name, text in (static_output or {}).items():
        path = folder / "generate" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return folder


def order(
    path: Path,
    buildpack_groups: list[list[str | tuple[str, bool]]],
    extensions: list[str] | None = None,
) -> Path:
    """order.toml: groups of buildpack ids (optional as `(id, True)`), then
    one group of extensions."""
    text = ""
    if extensions:
        text += "[[order-extensions]]\n"
        for extension in extensions:
            text += f'[[order-extensions.group]]\nid = "{extension}"\n'
            text += 'version = "0.0.1"\n'
    for group in buildpack_groups:
        text += "[[order]]\n"
        for entry in group:
            name, optional = entry if isinstance(entry, tuple) else (entry, False)
            text += f'[[order.group]]\nid = "{name}"\nversion = "0.0.1"\n'
            if optional:
                text += "optional = true\n"
    path.write_text(text)
    return path


PROVIDES = """\
printf '[[provides]]\\nname = "%s"\\n' "{name}" >>"$2"
"""

# A buildpack that requires each name BP_REQUIRES lists (comma separated), as
# the buildpacks samples do; build-ext's requirement carries the target OS.
REQUIRER_DETECT = """\
for name in $(echo "${BP_REQUIRES:-}" | tr ',' ' '); do
  printf '[[requires]]\\nname = "%s"\\n' "$name" >>"$2"
  if [ "$name" = build-ext ]; then
    printf '[requires.metadata]\\nos = "%s"\\n' "${CNB_TARGET_OS:-}" >>"$2"
  fi
done
"""


# A buildpack that passes only when bin/detect gets the arguments, working
# folder and environment of the spec; each check has its own exit code.
CHECKER_DETECT = """\
[ "$1" = "$CNB_PLATFORM_DIR" ] || exit 11
[ "$2" = "$CNB_BUILD_PLAN_PATH" ] || exit 12
[ -f "$2" ] && [ -w "$2" ] || exit 13
[ -f "$CNB_BUILDPACK_DIR/buildpack.toml" ] || exit 14
[ -f index.txt ] || exit 15
[ -n "$CNB_TARGET_OS" ] && [ -n "$CNB_TARGET_ARCH" ] || exit 16
[ "${FROM_PLATFORM:-}" = "a value" ] || exit 17
[ -z "${CNB_USER_ID:-}" ] || exit 18
# From the builder's /cnb/build-config/env (see BUILD_CONFIG): an override, a
# default the platform's value beats, and a prepend to the inherited PATH.
[ "${IMGEXT_TEST_CONFIG:-}" = "from-config" ] || exit 19
[ "${FROM_PLATFORM:-}" = "a value" ] || exit 20
case $PATH in /config/bin:?*) ;; *) exit 21 ;; esac
"""

# The build config of the test builder image: /cnb/build-config/env.
BUILD_CONFIG = {
    "IMGEXT_TEST_CONFIG": "from-config",
    "FROM_PLATFORM.default": "the platform sets it",
    "PATH.prepend": "/config/bin",
    "PATH.delim": ":",
}


def sample_store(root: Path) -> tuple[Path, Path, Path]:
    """Extensions, buildpacks and order.toml covering every case the detect
    and generate tests need; BP_REQUIRES in the platform env picks which
    extensions a build keeps."""
    extensions = root / "extensions"
    buildpacks = root / "buildpacks"
    component(
        extensions,
        "extension",
        "test/run-switch",
        static_plan='[[provides]]\nname = "run-switch"\n',
        static_output={"run.Dockerfile": "FROM imgext-test/run-alt:tiny\n"},
    )
    component(
        extensions,
        "extension",
        "test/build-ext",
        detect=PROVIDES.format(name="build-ext"),
        generate="""\
        os=$(sed -n 's/^os = "\\(.*\\)"$/\\1/p' "$3")
        cat >"$1/build.Dockerfile" <<'EOF'
        ARG base_image
        FROM ${base_image}
        ARG user_id
        ARG group_id
        ARG target_os
        USER root
        RUN echo "built for $target_os" >/opt-build-ext
        USER ${user_id}:${group_id}
        EOF
        printf '[[build.args]]\\nname = "target_os"\\nvalue = "%s"\\n' "$os" \\
          >"$1/extend-config.toml"
        echo "build-ext generated for $os"
        """,
    )
    component(
        extensions,
        "extension",
        "test/run-ext",
        detect=PROVIDES.format(name="run-ext"),
        generate="""\
        mkdir -p "$1/context.run"
        echo from-context >"$1/context.run/note.txt"
        cat >"$1/run.Dockerfile" <<'EOF'
        ARG base_image
        FROM ${base_image}
        COPY note.txt /etc/run-ext-note
        LABEL io.buildpacks.rebasable=true
        USER 1000:1000
        EOF
        """,
    )
    component(
        extensions,
        "extension",
        "test/never",
        detect="echo 'not for this app' >&2\nexit 100\n",
        generate="exit 1\n",
    )
    component(
        extensions,
        "extension",
        "test/unused",
        detect=PROVIDES.format(name="unused"),
        generate="exit 1\n",
    )
    component(
        extensions,
        "extension",
        "test/fails",
        detect=PROVIDES.format(name="fails"),
        generate="echo 'cannot reach the package index' >&2\nexit 3\n",
    )
    component(
        extensions,
        "extension",
        "test/bad-output",
        detect=PROVIDES.format(name="bad-output"),
        generate="""\
        printf 'ARG base_image\\nFROM ${base_image}\\nFROM ${base_image}\\n' \\
          >"$1/build.Dockerfile"
        """,
    )
    component(
        extensions,
        "extension",
        "test/whoami",
        detect=PROVIDES.format(name="whoami"),
        generate="""\
        mkdir -p "$1/context"
        echo "$(id -u):$(id -g) $(pwd) $CNB_PLATFORM_DIR" >"$1/context/whoami"
        """,
    )
    # Not in the order: tests that interrupt detect name it in an order of
    # their own.
    component(
        extensions,
        "extension",
        "test/sleeps",
        detect="sleep 60\n",
        generate="exit 1\n",
    )
    component(buildpacks, "buildpack", "test/requirer", detect=REQUIRER_DETECT)
    component(buildpacks, "buildpack", "test/checker", detect=CHECKER_DETECT)
    order_path = order(
        root / "order.toml",
        [["test/requirer"]],
        [
            "test/run-switch",
            "test/never",
            "test/build-ext",
            "test/unused",
            "test/run-ext",
            "test/fails",
            "test/bad-output",
            "test/whoami",
        ],
    )
    return extensions, buildpacks, order_path


def platform(root: Path, **env: str) -> Path:
    """A platform folder whose env/ holds `env`."""
    folder = root / "env"
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in env.items():
        (folder / name).write_text(value)
    return root


def builder_context(
    base: str, extensions: Path, buildpacks: Path, order: Path
) -> bytes:
    """A tar build context for a builder image: /cnb from the folders given
    plus BUILD_CONFIG, root-owned and readable, the image's own user kept."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dockerfile = (
            f"FROM {base}\nUSER root\nCOPY cnb /cnb\nRUN chmod -R a+rX /cnb\n"
            "USER 1000:1000\n"
        ).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(extensions, "cnb/extensions")
        tar.add(buildpacks, "cnb/buildpacks")
        tar.add(order, "cnb/order.toml")
        for name, text in BUILD_CONFIG.items():
            data = text.encode()
            info = tarfile.TarInfo(f"cnb/build-config/env/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def member(
    name: str,
    *,
    optional: bool = False,
    extension: bool = False,
    has_generate: bool = False,
) -> Member:
    """A group member whose executables are never run (for planning tests)."""
    found = Component(
        kind="extension" if extension else "buildpack",
        id=name,
        version="1",
        api="0.10",
        homepage="",
        clear_env=False,
        local=Path("/nowhere"),
        root="/nowhere",
        has_detect=True,
        has_generate=has_generate,
    )
    return Member(Element(name, "1", optional, extension), found)
