"""A driver package registers its URL scheme, and ``th.App(url)`` and the CLI's
``--url`` open it.

The package is built in a temporary folder as an installed distribution would
leave it: a module and a ``.dist-info`` folder whose ``entry_points.txt``
registers factories in the ``taskharbor.drivers`` group.  Putting that folder on
``sys.path`` (in this process) or ``PYTHONPATH`` (in a subprocess) is all
``importlib.metadata`` needs to find it, so the test needs no network and no
change to the virtual environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import taskharbor as th
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import EnqueueRequest, InvalidRequest
from taskharbor.urls import ENTRY_POINT_GROUP, open_driver

SCRIPT = Path(sys.executable).parent / "taskharbor"

PACKAGE = '''
"""A third-party driver package: its store is a SQLite file under another name."""

from urllib.parse import urlsplit

from taskharbor.drivers.sqlite import SQLiteDriver


class TinyDriver(SQLiteDriver):
    """The driver the package ships."""


def open_store(url):
    """The factory: the whole URL in, a driver out, its schema left alone."""
    return TinyDriver(urlsplit(url).path, migrate=False)


def not_a_driver(url):
    return object()
'''

ENTRY_POINTS = f"""
[{ENTRY_POINT_GROUP}]
tinyfile = tiny_harbor:open_store
broken = tiny_harbor:not_a_driver
memory = tiny_harbor:open_store
twice = tiny_harbor:open_store
"""

SECOND_ENTRY_POINTS = f"""
[{ENTRY_POINT_GROUP}]
twice = tiny_harbor:not_a_driver
"""


def write_dist(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the package as installed: module, metadata, entry points."""
    site = tmp_path_factory.mktemp("site")
    (site / "tiny_harbor.py").write_text(PACKAGE)
    write_dist(site, "tiny_harbor", ENTRY_POINTS)
    write_dist(site, "tiny_harbor_rival", SECOND_ENTRY_POINTS)
    return site


@pytest.fixture
def installed(site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(site))
    return site


def test_an_app_opens_a_store_of_a_registered_scheme(installed: Path, tmp_path: Path) -> None:
    app = th.App(f"tinyfile://{tmp_path}/jobs.db")
    try:
        assert type(app.driver).__name__ == "TinyDriver"
        assert type(app.driver).__module__ == "tiny_harbor"

        @app.task(name="add")
        def add(a: int, b: int) -> int:
            return a + b

        job = add.enqueue(2, 3)
        th.Worker(app, concurrency=1).run(burst=True)
        assert app.get_job(job.id).result == 5
    finally:
        app.close()


def test_the_cli_opens_a_registered_scheme_by_url(installed: Path, tmp_path: Path) -> None:
    """The installed script, in a fresh interpreter that finds the package on its path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHARBOR_")}
    env["PYTHONPATH"] = str(installed)
    url = f"tinyfile://{tmp_path}/jobs.db"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(SCRIPT), "--url", url, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    app = th.App(url)
    try:
        (job,) = app.enqueue_requests([EnqueueRequest("report.build", queue="reports")])
    finally:
        app.close()
    listed = run("jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(row["id"], row["task"]) for row in json.loads(listed.stdout)["jobs"]] == [
        (job.id, "report.build")
    ]


def test_a_shipped_scheme_cannot_be_taken_over(installed: Path) -> None:
    assert isinstance(open_driver("memory://"), MemoryDriver)


def test_an_unknown_scheme_names_the_registered_ones_and_the_group(installed: Path) -> None:
    with pytest.raises(InvalidRequest) as refused:
        open_driver("nosuch://host")
    assert "tinyfile://... (registered)" in str(refused.value)
    assert repr(ENTRY_POINT_GROUP) in str(refused.value)


def test_a_factory_that_returns_no_driver_is_refused(installed: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"tiny_harbor:not_a_driver .* returned object"):
        open_driver("broken://x")


def test_a_scheme_registered_twice_is_refused(installed: Path) -> None:
    with pytest.raises(InvalidRequest, match="registered by several driver factories"):
        open_driver("twice://x")
