"""The driver author's guide cannot rot: its toy driver passes the whole contract.

docs/examples/toy_driver.py is loaded by path (it is an example, not part of
the package) and run through the whole ``ConformanceSuite`` and the model
tests, exactly as docs/drivers.md tells a driver author to; a few more tests
check what only a file store promises (persistence, several processes, a clear
refusal of a file that is not a store).  The guide links the toy driver and
quotes excerpts of it and of this file, and shows a SQL ``CASE`` example: the
last tests check that each excerpt is still verbatim in the file it quotes,
and that the example compiles to SQL taking the transitions the table takes.
"""

from __future__ import annotations

import errno
import importlib.util
import itertools
import multiprocessing
import re
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis.stateful import run_state_machine_as_test
from test_engine_support import EVENTUALLY

import taskharbor as th
from driver_registry import fail_once
from taskharbor.conformance import ConformanceSuite
from taskharbor.model_tests import driver_state_machine, hypothesis_settings
from taskharbor.spec import (
    JOB,
    JOB_GUARDS,
    Clock,
    Driver,
    EnqueueRequest,
    FakeClock,
    JobEvent,
    JobFilter,
    JobState,
    SchemaError,
    WorkflowState,
)

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "drivers.md"
TOY_DRIVER = ROOT / "docs" / "examples" / "toy_driver.py"


def load_toy_driver() -> ModuleType:
    """Import docs/examples/toy_driver.py as the module ``toy_driver``."""
    spec = importlib.util.spec_from_file_location("toy_driver", TOY_DRIVER)
    assert spec is not None and spec.loader is not None, f"cannot load {TOY_DRIVER}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining classes
    spec.loader.exec_module(module)
    return module


JsonFileDriver: Callable[..., Driver] = load_toy_driver().JsonFileDriver
"""The toy driver's class: ``JsonFileDriver(path, clock=...)``."""


# -- the contract, as docs/drivers.md shows it --------------------------------


class TestJsonFileDriver(ConformanceSuite):
    @pytest.fixture
    def driver_factory(self, tmp_path: Path) -> Callable[[Clock | None], Driver]:
        return lambda clock: JsonFileDriver(tmp_path / "store.json", clock=clock)

    @pytest.fixture
    def fail_next_call(self) -> Callable[[Driver], None]:
        """A hook: the next call cannot read the file (an I/O error of its disk)."""
        return lambda store: fail_once(store, "_read", OSError(errno.EIO, "I/O error"))

    @pytest.fixture
    def open_shared_store(self, tmp_path: Path) -> Callable[[], Driver]:
        """A hook: one store that processes share (for the multi-process and crash rules)."""
        return lambda: JsonFileDriver(tmp_path / "shared.json")


def test_json_file_driver_matches_the_model(tmp_path: Path) -> None:
    numbers = itertools.count()

    def make_store(clock: Clock) -> Driver:  # a fresh, empty store each time
        return JsonFileDriver(tmp_path / f"store-{next(numbers)}.json", clock=clock)

    machine = driver_state_machine(make_store)
    run_state_machine_as_test(machine, settings=hypothesis_settings(slow_store=True))


# -- what only a file store has to prove -----------------------------------------


def test_the_store_survives_the_driver(tmp_path: Path) -> None:
    clock = FakeClock()
    first = JsonFileDriver(tmp_path / "store.json", clock=clock)
    first.migrate()
    (stored,) = first.enqueue([EnqueueRequest("task", args=(1.5, "é", [None]), priority=-3)])
    (leased,) = first.lease(["default"], 1, 30.0, "worker")
    first.close()
    second = JsonFileDriver(tmp_path / "store.json", clock=clock)
    second.migrate()
    assert second.get([stored.job.id]) == [leased]


def test_an_app_runs_a_chord_on_the_toy_driver(tmp_path: Path) -> None:
    store = JsonFileDriver(tmp_path / "jobs.json")
    store.migrate()
    app = th.App(driver=store)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="total")
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    handle = app.enqueue(th.chord([add.s(1, 1), add.s(2, 2)], total.s()))
    th.Worker(app, concurrency=2).run(burst=True)
    assert handle.wait(timeout=EVENTUALLY) == WorkflowState.SUCCEEDED
    assert handle.result() == 6


def enqueue_one_by_one(path: Path, count: int) -> None:
    store = JsonFileDriver(path)
    for number in range(count):
        store.enqueue([EnqueueRequest("task", args=(number,))])


def test_processes_sharing_the_file_never_lose_a_write(tmp_path: Path) -> None:
    """Without the file lock, two read-modify-writes at once would drop one of the jobs."""
    path = tmp_path / "store.json"
    JsonFileDriver(path).migrate()
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=enqueue_one_by_one, args=(path, 25)) for _ in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0, 0]
    stored = JsonFileDriver(path).list_jobs(JobFilter(limit=1000))
    assert [job.id for job in stored] == list(range(1, 76))


def test_a_store_that_was_never_migrated_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="call migrate"):
        JsonFileDriver(tmp_path / "store.json").count()


@pytest.mark.parametrize(
    ("content", "complaint"),
    [('{"format": 99}', "has format 99"), ("[1]", "has format None"), ("{", "not a JSON store")],
)
def test_a_file_that_is_not_a_store_of_this_format_is_refused_by_migrate(
    tmp_path: Path, content: str, complaint: str
) -> None:
    (tmp_path / "store.json").write_text(content)
    with pytest.raises(SchemaError, match=complaint):
        JsonFileDriver(tmp_path / "store.json").migrate()


# -- the guide shows the code that runs --------------------------------------------

MARKED_BLOCK = re.compile(
    r"^<!-- (?P<kind>excerpt|runs): (?P<name>\S+) -->\n```\w*\n(?P<code>.*?)^```$",
    re.DOTALL | re.MULTILINE,
)
"""A code block of the guide right after a marker: ``excerpt: <file>`` or ``runs: <name>``."""

ELISION = re.compile(r"^\.\.\.\n", re.MULTILINE)
"""A line ``...`` in an excerpt: lines of the quoted file are left out there."""


def marked_blocks(kind: str) -> list[tuple[str, str]]:
    """``(name, code)`` of every block of the guide marked ``kind``, in order."""
    found = MARKED_BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))
    return [(match["name"], match["code"]) for match in found if match["kind"] == kind]


def test_every_excerpt_in_the_guide_is_what_the_quoted_file_says() -> None:
    excerpts = marked_blocks("excerpt")
    quoted = {name for name, _ in excerpts}
    assert quoted == {"docs/examples/toy_driver.py", "tests/test_docs_drivers.py"}
    for name, code in excerpts:
        source = (ROOT / name).read_text(encoding="utf-8")
        position = 0
        for chunk in ELISION.split(code):
            found = source.find(chunk, position)
            assert found >= 0, f"docs/drivers.md quotes {name}, which no longer says:\n{chunk}"
            position = found + len(chunk)


def guard_sql_covers(guard_sql: dict[str, str], event: JobEvent) -> bool:
    return all(
        guard in guard_sql
        for source in JOB.sources(event)
        for choice in JOB.options(event, source)
        for guard in choice.guards
    )


def test_the_sql_case_of_the_guide_takes_the_transition_the_table_takes() -> None:
    ((name, code),) = marked_blocks("runs")
    example: dict[str, Any] = {}
    exec(compile(code, f"{GUIDE} ({name})", "exec"), example)
    target_case, guard_sql = example["target_case"], example["GUARD_SQL"]
    assert set(guard_sql) <= set(JOB_GUARDS)
    events = [event for event in JobEvent if guard_sql_covers(guard_sql, event)]
    assert {JobEvent.FAIL, JobEvent.SNOOZE, JobEvent.LEASE_EXPIRED} <= set(events)

    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE jobs (state TEXT, cancel_requested INT, attempt INT, max_attempts INT)"
    )
    rows = itertools.product(JobState, (False, True), (2, 3))
    db.executemany("INSERT INTO jobs VALUES (?, ?, ?, 3)", [(s.value, c, a) for s, c, a in rows])
    for event, permanent in itertools.product(events, (False, True)):
        select = f"SELECT state, cancel_requested, attempt, {target_case(event)} FROM jobs"
        for state, cancel_requested, attempt, target in db.execute(
            select, {"permanent": permanent}
        ):
            facts = {
                "cancel_requested": bool(cancel_requested),
                "attempts_exhausted": attempt >= 3,
                "permanent": permanent,
            }
            expected = JOB.resolve(event, state, facts) if JOB.allows(event, state) else None
            assert target == expected, f"{event} from {state} with {facts}"


def test_the_sql_the_guide_prints_is_what_its_example_makes() -> None:
    ((name, code),) = marked_blocks("runs")
    example: dict[str, Any] = {}
    exec(compile(code, f"{GUIDE} ({name})", "exec"), example)
    shown = re.search(
        r"`target_case\(JobEvent\.(?P<event>\w+)\)` gives:\n\n```sql\n(?P<sql>.*?)\n```",
        GUIDE.read_text(encoding="utf-8"),
        re.DOTALL,
    )
    assert shown is not None, "docs/drivers.md no longer shows the SQL of its CASE example"
    assert example["target_case"](JobEvent[shown["event"]]) == shown["sql"]
