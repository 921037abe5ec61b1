"""Imports point one way: engine -> spec, drivers -> spec, never back.

Every module of the package is parsed (not imported) and each of its imports,
relative ones resolved, is checked against the layer rules of DESIGN.md:

* ``spec`` imports nothing of the project;
* a driver package imports ``spec``, the shared driver helpers at the top of
  ``drivers/`` and its own package, never another driver nor the engine;
* the engine imports ``spec`` and itself, and ``drivers`` only in the modules
  that open a store (:data:`ENGINE_OPENS_STORES`);
* ``conformance`` and ``model_tests`` import ``spec`` and themselves: a driver
  reaches them through a fixture, never an import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from importlib.util import resolve_name
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "taskharbor"
FOLDERS = {
    "spec": f"{PACKAGE}.spec",
    "drivers": f"{PACKAGE}.drivers",
    "conformance": f"{PACKAGE}.conformance",
    "model_tests": f"{PACKAGE}.model_tests",
    "engine": PACKAGE,
}
"""Folder -> the import package it is mapped to (pyproject.toml's package-dir)."""

ENGINE_OPENS_STORES = {
    f"{PACKAGE}.urls": "opens a store from its URL",
    f"{PACKAGE}.testing": "the Harness opens a memory store",
}
"""The engine modules allowed to import ``taskharbor.drivers``, and why."""


def module_name(path: Path) -> str:
    folder = path.relative_to(ROOT).parts[0]
    parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([FOLDERS[folder], *parts])


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def project_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import of the project in one file."""
    name = module_name(path)
    anchor = name if is_package(path) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = resolve_name("." * node.level + base, anchor).rstrip(".")
            # ``from pkg import sub`` may name a submodule: check pkg.sub too.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(f"{PACKAGE}."):
                yield node.lineno, target


def layer(module: str) -> str:
    """The layer a module belongs to: spec, drivers, conformance, model_tests or engine."""
    for folder, package in FOLDERS.items():
        if folder != "engine" and (module == package or module.startswith(f"{package}.")):
            return folder
    return "engine"


def driver_package(module: str) -> str | None:
    """``taskharbor.drivers.sqlite.rows`` -> ``sqlite``; None for the shared helpers."""
    parts = module.split(".")
    candidate = parts[2] if len(parts) > 2 else None
    if candidate and (ROOT / "drivers" / candidate).is_dir():
        return candidate
    return None


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None when it may."""
    source, target = layer(importer), layer(imported)
    if target == "spec" or (imported == PACKAGE and source == "engine"):
        return None
    if source == "spec":
        return "spec imports nothing of the project"
    if source == "drivers":
        if target != "drivers":
            return "drivers import the spec and drivers only"
        own, other = driver_package(importer), driver_package(imported)
        if other is not None and other != own:
            return "a driver never imports another driver"
        return None
    if source in ("conformance", "model_tests"):
        return None if target == source else f"{source} imports the spec and itself only"
    if target == "drivers" and importer not in ENGINE_OPENS_STORES:
        return "the engine imports drivers only where it opens a store"
    if target in ("conformance", "model_tests"):
        return f"the engine never imports {target}"
    return None


def package_files() -> list[Path]:
    return sorted(path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))


def test_imports_point_one_way() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}: {reason}"
        for path in package_files()
        for line, imported in project_imports(path)
        if (reason := violation(module_name(path), imported))
    ]
    assert found == []


def test_every_folder_is_scanned() -> None:
    names = {module_name(path) for path in package_files()}
    for expected in (
        "taskharbor.spec.lifecycle",
        "taskharbor.drivers.sqlite.driver",
        "taskharbor.drivers.postgres.statements",
        "taskharbor.cli.jobs",
        "taskharbor.conformance.harness",
        "taskharbor.model_tests.machine",
    ):
        assert expected in names
    for module in ENGINE_OPENS_STORES:
        assert module in names, f"stale entry in ENGINE_OPENS_STORES: {module}"


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("taskharbor.spec.model", "taskharbor.drivers.memory"),
        ("taskharbor.spec.model", "taskharbor.worker"),
        ("taskharbor.drivers.sqlite.driver", "taskharbor.app"),
        ("taskharbor.drivers.sqlite.driver", "taskharbor.drivers.postgres.rows"),
        ("taskharbor.drivers.corrupt_rows", "taskharbor.drivers.memory.rows"),
        ("taskharbor.conformance.leasing", "taskharbor.drivers.memory"),
        ("taskharbor.model_tests.machine", "taskharbor.testing"),
        ("taskharbor.worker", "taskharbor.drivers.sqlite"),
        ("taskharbor.cli.jobs", "taskharbor.drivers.postgres.connect"),
        ("taskharbor.app", "taskharbor.conformance"),
    ],
)
def test_an_import_against_the_direction_is_caught(importer: str, imported: str) -> None:
    assert violation(importer, imported) is not None


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("taskharbor.drivers.sqlite.driver", "taskharbor.drivers.sqlite.rows"),
        ("taskharbor.drivers.sqlite.rows", "taskharbor.drivers.corrupt_rows"),
        ("taskharbor.urls", "taskharbor.drivers.postgres"),
        ("taskharbor.cli.main", "taskharbor"),
        ("taskharbor.conformance.leasing", "taskharbor.spec.records"),
    ],
)
def test_an_import_along_the_direction_is_allowed(importer: str, imported: str) -> None:
    assert violation(importer, imported) is None


def test_relative_imports_are_resolved() -> None:
    path = ROOT / "drivers" / "sqlite" / "rows.py"
    assert "taskharbor.drivers.corrupt_rows.decode_job" in {
        imported for _, imported in project_imports(path)
    }


def test_the_driver_guide_shows_every_driver_module() -> None:
    """docs/drivers.md draws the drivers' tree: it names every module there is, and no other."""
    guide = (ROOT / "docs" / "drivers.md").read_text()
    tree = guide.split("## How the shipped drivers are laid out", 1)[1].split("```")[1]
    shown: set[str] = set()
    folder = ""
    for line in tree.splitlines():
        words = line.split()
        if words and words[0].endswith("/") and words[0] != "drivers/":
            folder = words[0]
        elif words and not line.startswith("    ") and words[0].endswith(".py"):
            folder = ""
        shown |= {f"{folder}{word}" for word in words if word.endswith(".py")}
    existing = {
        path.relative_to(ROOT / "drivers").as_posix()
        for path in (ROOT / "drivers").rglob("*.py")
        if path.name != "__init__.py"
    }
    assert shown == existing


OPTIONAL_LIBRARIES = {
    "prometheus_client": f"{PACKAGE}.contrib.prometheus",
    "opentelemetry": f"{PACKAGE}.contrib.otel",
    "fastapi": f"{PACKAGE}.contrib.fastapi",
    "sqlalchemy": f"{PACKAGE}.contrib.fastapi",
    "django": f"{PACKAGE}.contrib.django",
    "pydantic": f"{PACKAGE}.contrib.pydantic",
}
"""Libraries of the extras -> the one module (or package) that may import each
(DESIGN.md: each integration imports its third-party library only inside itself)."""


def library_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level name) for every absolute import in one file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_each_extras_library_is_imported_by_its_integration_only() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {library}, which only {owner} may import"
        for path in package_files()
        for line, library in library_imports(path)
        if (owner := OPTIONAL_LIBRARIES.get(library))
        and module_name(path) != owner
        and not module_name(path).startswith(f"{owner}.")
    ]
    assert found == []


def test_importing_taskharbor_needs_no_extra() -> None:
    """The integrations' libraries stay unloaded by ``import taskharbor``, its CLI and its
    worker: a missing extra can only break the integration that needs it."""
    loaded_by_dependencies = {"django"}  # python-statemachine probes for it, if installed
    probe = (
        "import sys, taskharbor, taskharbor.cli, taskharbor.worker, taskharbor.contrib\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{set(OPTIONAL_LIBRARIES) - loaded_by_dependencies!r}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    # ... and without any of them installed, taskharbor imports all the same.
    blocked = "".join(f"sys.modules[{library!r}] = None\n" for library in OPTIONAL_LIBRARIES)
    without = "import sys\n" + blocked + probe.split("\n", 1)[0].replace("import sys, ", "import ")
    subprocess.run([sys.executable, "-c", without], capture_output=True, text=True, check=True)
