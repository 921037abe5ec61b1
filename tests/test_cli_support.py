"""Shared pieces of the CLI tests (no tests here): a store behind ``--app``, and
ways to put jobs into each state through the driver SPI.

``cli_store`` gives a fresh store of every driver (the ``driver_factory``
fixture) on a fake clock, wrapped in an App that lives in a throw-away module,
so the CLI loads it exactly as an operator's ``--app module:attr``.
"""

from __future__ import annotations

import json
import sys
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from driver_registry import DriverFactory
from taskharbor.app import App
from taskharbor.cli import main
from taskharbor.spec import (
    Completion,
    Driver,
    EnqueueRequest,
    ErrorReport,
    Failure,
    FakeClock,
    JobRecord,
    StepSpec,
    WorkflowGraph,
    WorkflowRecord,
)

AppModule = Callable[[str], str]
"""Writes a module with the given source; returns its name."""

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TRACEBACK = 'Traceback (most recent call last):\n  File "jobs.py", line 3\nValueError: [red]no'


def invoke(args: Sequence[str], env: dict[str, str] | None = None) -> Result:
    """Run ``taskharbor ARGS`` through the real entry point, stdout and stderr apart."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def one_error_line(result: Result) -> str:
    """The single line a failing command prints on stderr (and nothing on stdout)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return lines[0]


@dataclass
class CliStore:
    """A store the CLI reaches with ``--app <module>:app``."""

    app: App
    clock: FakeClock
    app_path: str

    @property
    def driver(self) -> Driver:
        return self.app.driver

    def run(self, *args: str) -> Result:
        return invoke(["--app", self.app_path, *args])

    def ok(self, *args: str) -> Result:
        """Run a command that must succeed."""
        result = self.run(*args)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        """Run a command with ``--json`` and parse what it printed."""
        return json.loads(self.ok(*args, "--json").stdout)

    def enqueue(self, task: str = "tasks.add", count: int = 1, **fields: Any) -> list[JobRecord]:
        requests = [EnqueueRequest(task, args=(index,), **fields) for index in range(count)]
        return [result.job for result in self.driver.enqueue(requests)]

    def lease_all(self, queue: str = "default") -> list[JobRecord]:
        return self.driver.lease([queue], 10_000, 60.0, "test-worker")

    def dead(self, task: str = "tasks.flaky", count: int = 1) -> list[JobRecord]:
        """Jobs that failed their only attempt: in the dead-letter queue."""
        jobs = self.enqueue(task, count, max_attempts=1, queue="dlq-source")
        leased = self.lease_all("dlq-source")
        error = ErrorReport("ValueError", "no [bold]luck", TRACEBACK)
        failures = [Failure(job.id, str(job.lease_token), error) for job in leased]
        assert not self.driver.fail(failures)
        return self.driver.get([job.id for job in jobs])

    def succeeded(self, result: Any = 42) -> JobRecord:
        (job,) = self.enqueue("tasks.done", queue="done-source")
        (leased,) = self.lease_all("done-source")
        assert not self.driver.complete([Completion(job.id, str(leased.lease_token), result)])
        return self.driver.get([job.id])[0]

    def chord(self) -> WorkflowRecord:
        """Two members, then a callback that waits for both."""
        steps = (
            StepSpec(EnqueueRequest("tasks.fetch", args=(1,))),
            StepSpec(EnqueueRequest("tasks.fetch", args=(2,))),
            StepSpec(EnqueueRequest("tasks.total"), after=(0, 1), input=[0, 1]),
        )
        return self.driver.enqueue_workflow(WorkflowGraph(steps, result=2, name="totals"))


@pytest.fixture
def cli_store(driver_factory: DriverFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliStore]:
    clock = FakeClock(START)
    driver = driver_factory(clock)
    driver.migrate()
    module = types.ModuleType(f"cli_test_app_{uuid.uuid4().hex}")
    app = App(driver=driver)
    module.__dict__["app"] = app
    monkeypatch.setitem(sys.modules, module.__name__, module)
    yield CliStore(app, clock, f"{module.__name__}:app")


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppModule]:
    """Writes application modules into a fresh working directory, as an operator's
    project would have them; closes their stores and forgets them afterwards."""
    monkeypatch.chdir(tmp_path)
    written: list[str] = []

    def write(source: str) -> str:
        name = f"cli_test_project_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield write
    for name in written:
        module = sys.modules.pop(name, None)
        app = getattr(module, "app", None)
        if isinstance(app, App):
            app.close()
