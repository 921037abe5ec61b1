"""The wheel ships every module of every mapped folder, and py.typed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {
    "engine": "taskharbor",
    "spec": "taskharbor/spec",
    "drivers": "taskharbor/drivers",
    "conformance": "taskharbor/conformance",
    "model_tests": "taskharbor/model_tests",
}


@dataclass(frozen=True)
class Built:
    wheel: Path
    output: str
    """What the build printed (stdout and stderr)."""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("taskharbor-*.whl")
    return Built(wheel, done.stdout + done.stderr)


@pytest.fixture(scope="module")
def wheel_names(built: Built) -> set[str]:
    with zipfile.ZipFile(built.wheel) as archive:
        return set(archive.namelist())


def test_the_license_is_an_spdx_expression_and_builds_without_warnings(built: Built) -> None:
    """The table form (license = {text = ...}) is deprecated: setuptools warns on every
    build (about 14 lines each time, three times per install) and stops accepting it
    in 2027."""
    with zipfile.ZipFile(built.wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    assert "License-Expression: MIT" in lines
    assert "Warning" not in built.output and "deprecated" not in built.output, built.output


def test_every_module_is_in_the_wheel(wheel_names: set[str]) -> None:
    expected = {
        f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, package in MAPPED.items()
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected, "no modules found: the mapping above is wrong"
    missing = sorted(expected - wheel_names)
    assert missing == [], f"add their packages to pyproject.toml [tool.setuptools]: {missing}"


def test_py_typed_ships(wheel_names: set[str]) -> None:
    assert "taskharbor/py.typed" in wheel_names


def test_tests_and_scripts_do_not_ship(wheel_names: set[str]) -> None:
    assert not [name for name in wheel_names if name.startswith(("tests/", "scripts/"))]


@pytest.mark.parametrize(
    ("module", "needs"),
    [("taskharbor.conformance", "pytest"), ("taskharbor.model_tests", "hypothesis")],
)
def test_the_suites_without_their_extra_name_it(module: str, needs: str) -> None:
    """A driver author who installed taskharbor alone is told which extra to add."""
    hide = f"import sys; sys.modules[{needs!r}] = None; import {module}"
    run = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True)
    assert run.returncode != 0
    assert f"{module} needs {needs}" in run.stderr
    assert "pip install 'taskharbor[conformance]'" in run.stderr


def test_the_conformance_extra_declares_what_the_suites_import() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = project["optional-dependencies"]["conformance"]
    assert {requirement.split(">")[0] for requirement in extra} == {"pytest", "hypothesis"}


def test_make_demo_installs_no_dev_tools(tmp_path: Path) -> None:
    """make demo on a fresh clone installs the package and its runtime dependencies only."""
    done = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    installs = [line for line in done.stdout.splitlines() if " install " in line]
    assert installs and all("[dev]" not in line and "-e ." in line for line in installs[1:])
    assert installs[-1].endswith("pip install -q -e . --config-settings editable_mode=strict")
