"""A Python child run as an unprivileged user, wherever the checkout lies.

Root may write a read-only file, so the tests of read-only stores run their
child as ``nobody`` when the suite runs as root.  That user cannot enter a
checkout under a private folder (mode 700: what ``mktemp -d`` makes, and
root's home), so it could import neither the package nor the virtualenv's
dependencies from there.  :func:`python_as_nobody` gives it a copy it can read
instead: the installed ``taskharbor`` package and its runtime dependencies
(files as their distributions list them) and the tests' helper modules, in a
world-readable temporary folder made once per test session, run by the base
interpreter the virtualenv was made from.

Without root the tests' child simply runs as the current user
(:func:`ordinary_python`): the file modes already bind it.
"""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import taskharbor

TESTS = Path(__file__).resolve().parent
"""The tests folder: its modules and those of ``faults/`` are what children import."""

AS_ROOT = os.geteuid() == 0
DROP_TO_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
"""Run a command as a user who may not write read-only files (root may)."""


@dataclass(frozen=True)
class Python:
    """How to start a Python child: its command, environment and folders."""

    command: tuple[str, ...]
    """The interpreter, behind the privilege drop when there is one."""
    env: dict[str, str]
    tests: Path
    """The tests folder this child imports helpers from (the original or a copy)."""
    cwd: Path | None = None


def ordinary_python() -> Python:
    """A child as this user, importing the tests' helpers from the checkout."""
    return Python((sys.executable,), {**os.environ, "PYTHONPATH": str(TESTS)}, TESTS)


def python_without_write_rights() -> Python:
    """A child for whom read-only files are read-only: ``nobody`` as root, else this user."""
    return python_as_nobody() if AS_ROOT else ordinary_python()


@functools.cache
def python_as_nobody() -> Python:
    """A child as ``nobody`` on a copy it can read; skips, loudly, only when the
    privilege drop itself is impossible here."""
    interpreter = base_interpreter()
    if shutil.which(DROP_TO_NOBODY[0]) is None:
        pytest.skip("SKIPPED AS NOBODY: setpriv is not installed, privileges cannot be dropped")
    dropped = subprocess.run([*DROP_TO_NOBODY, interpreter, "-c", "pass"], capture_output=True)
    if dropped.returncode != 0:
        pytest.skip(
            f"SKIPPED AS NOBODY: cannot run {interpreter} as nobody: {dropped.stderr.decode()}"
        )
    root = Path(tempfile.mkdtemp(prefix="th-as-nobody-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    copy_package(root / "site")
    for folder in (TESTS, TESTS / "faults"):
        target = root / "tests" / folder.relative_to(TESTS)
        target.mkdir(parents=True)
        for module in folder.glob("*.py"):
            shutil.copyfile(module, target / module.name)
    readable_by_all(root)
    path = os.pathsep.join(str(root / part) for part in ("site", "tests"))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONNOUSERSITE": "1"}
    python = Python((*DROP_TO_NOBODY, interpreter, "-s"), env, root / "tests", root)
    probe = subprocess.run(
        [*python.command, "-c", "import taskharbor.drivers.sqlite, workflow_crash_app"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    assert probe.returncode == 0, f"the copy for nobody does not import: {probe.stderr}"
    return python


def base_interpreter() -> str:
    """The interpreter behind the virtualenv (its link in the checkout may be out of reach)."""
    real = os.path.realpath(sys.executable)
    if Path(real).is_relative_to(sys.prefix):  # a venv made with --copies
        return str(getattr(sys, "_base_executable", real))
    return real


def copy_package(site: Path) -> None:
    """``taskharbor`` as imported here, and every runtime dependency, into ``site``."""
    shutil.copytree(
        Path(taskharbor.__file__).parent,  # links to the sources: copied as files
        site / "taskharbor",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for dist in runtime_dependencies("taskharbor"):
        for file in dist.files or ():
            source = Path(str(dist.locate_file(file)))
            if ".." in file.parts or "__pycache__" in file.parts or not source.is_file():
                continue  # scripts outside site-packages, caches
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def runtime_dependencies(name: str) -> list[importlib.metadata.Distribution]:
    """The distributions ``name`` needs at run time (not itself), extras followed."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset[str]())]
    while todo:
        current, extras = todo.pop()
        dist = importlib.metadata.distribution(current)
        if current != name:
            found[dist.metadata["Name"].lower()] = dist
        for text in dist.requires or ():
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
                needed = (requirement.name.lower(), frozenset(requirement.extras))
                if needed not in seen:
                    seen.add(needed)
                    todo.append(needed)
    return list(found.values())


def readable_by_all(root: Path) -> None:
    root.chmod(0o755)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
