"""SQLite-specific properties: the compiled transition table, index use, threads."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from test_engine_support import EVENTUALLY

from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite import driver as sqlite_driver
from taskharbor.drivers.sqlite.transitions import (
    GUARD_SQL,
    JOBS_BY_ID,
    LEASE_JOBS,
    ready_jobs_query,
    target_case,
)
from taskharbor.spec import (
    JOB,
    Completion,
    EnqueueRequest,
    FakeClock,
    InvalidRequest,
    JobEvent,
    JobState,
    LeaseRef,
)
from taskharbor.spec.model import ReferenceModel

COMPILABLE = [
    event
    for event in JobEvent
    if all(
        guard in GUARD_SQL
        for source in JOB.sources(event)
        for choice in JOB.options(event, source)
        for guard in choice.guards
    )
]


@pytest.mark.parametrize("event", COMPILABLE, ids=str)
def test_the_compiled_case_picks_the_tables_target_for_every_state_and_fact(
    event: JobEvent,
) -> None:
    case, params = target_case(event)
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE jobs (state TEXT, cancel_requested INT, attempt INT, max_attempts INT, "
        "run_at INT)"
    )
    rows = list(itertools.product(JobState, (0, 1), (1, 3), (3,), (5, 15)))
    conn.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?, ?)", rows)
    now = 10
    got = conn.execute(f"SELECT {case} FROM jobs", {**params, "now": now}).fetchall()
    for (state, cancel_requested, attempt, max_attempts, run_at), (target,) in zip(
        rows, got, strict=True
    ):
        facts = {
            "cancel_requested": bool(cancel_requested),
            "attempts_exhausted": attempt >= max_attempts,
            "run_at_in_future": run_at > now,
        }
        expected = JOB.resolve(event, state, facts) if JOB.allows(event, state) else None
        assert target == expected, (state, facts)


def plan(conn: sqlite3.Connection, sql: str, params: object) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def test_lease_promote_and_rescue_are_index_searches(tmp_path: Path) -> None:
    SQLiteDriver(tmp_path / "plans.db").close()
    conn = sqlite3.connect(tmp_path / "plans.db")
    now = {"now": 0}
    statements = {
        "lease one queue": (ready_jobs_query(1), {"q0": "a"}),
        "lease three queues": (ready_jobs_query(3), {"q0": "a", "q1": "b", "q2": "c"}),
        "promote": (sqlite_driver._PROMOTE, {**sqlite_driver._PROMOTE_PARAMS, **now}),
        "next due": (sqlite_driver._NEXT_DUE, {}),
        "rescue": (sqlite_driver._EXPIRED, now),
    }
    indexes = {
        "lease one queue": "jobs_lease_unlimited",
        "lease three queues": "jobs_lease_unlimited",
        "promote": "jobs_due",
        "next due": "jobs_due",
        "rescue": "jobs_lease_expiry",
    }
    for name, (sql, params) in statements.items():
        steps = plan(conn, sql, params)
        searches = [step for step in steps if step.startswith(("SEARCH", "SCAN"))]
        assert any(f"USING INDEX {indexes[name]}" in step for step in searches), (name, steps)
        assert not [step for step in searches if step.startswith("SCAN jobs")], (name, steps)
    by_id = {
        "lease": (
            LEASE_JOBS,
            {"target": "running", "expires": 0, "worker": "w", "ids": "[1, 2]", "tokens": ""},
        ),
        "complete": (
            sqlite_driver._COMPLETE,
            dict.fromkeys(["running", "cancelled", "by_request", "items"], "")
            | sqlite_driver._SUCCEED_PARAMS
            | now,
        ),
        "read by id": (JOBS_BY_ID, ("[1, 2]",)),
        "rescue by id": (
            sqlite_driver._RESCUE,
            dict.fromkeys(
                ["error_type", "error_message", "retrying", "cancelled", "by_request"], ""
            )
            | {"ids": "[1, 2]", "retry_at": "{}"}
            | sqlite_driver._RESCUE_PARAMS
            | now,
        ),
    }
    for name, (sql, params) in by_id.items():
        steps = plan(conn, sql, params)
        assert any("USING INTEGER PRIMARY KEY (rowid=?)" in step for step in steps), (name, steps)
        assert not [step for step in steps if step.startswith("SCAN job")], (name, steps)
    conn.close()


def test_a_large_mixed_batch_is_stored_as_the_reference_model_stores_it(tmp_path: Path) -> None:
    """A batch insert keeps the batch's order; keyed requests see the jobs before them."""
    clock = FakeClock()
    later = clock.now() + timedelta(minutes=5)
    requests = [
        EnqueueRequest(
            f"task-{n % 7}",
            args=(n, [n]) if n % 3 else (),
            kwargs={"n": n} if n % 5 == 0 else {},
            priority=n % 4,
            run_at=later if n % 11 == 0 else None,
            idempotency_key=f"key-{n % 13}" if n % 97 == 0 else None,
        )
        for n in range(1000)
    ]
    driver = SQLiteDriver(tmp_path / "batch.db", clock=clock)
    model = ReferenceModel(clock=clock)
    assert driver.enqueue(requests) == model.enqueue(requests)
    assert driver.enqueue(requests[:300]) == model.enqueue(requests[:300])
    driver.close()


def test_only_the_calls_carrying_a_callers_request_flush_the_log(tmp_path: Path) -> None:
    """Enqueue, cancel and requeue commit with ``synchronous = FULL``; worker calls don't."""
    driver = SQLiteDriver(tmp_path / "flush.db")
    statements: list[str] = []
    driver._handle().conn.set_trace_callback(statements.append)
    calls: dict[str, Callable[[], object]] = {
        "enqueue": lambda: driver.enqueue([EnqueueRequest("task")]),
        "cancel": lambda: driver.cancel([1]),
        "requeue": lambda: driver.requeue([1]),
        "lease": lambda: driver.lease(["default"], 1, 30.0, "w"),
        "heartbeat": lambda: driver.heartbeat([LeaseRef(1, leased())], 30.0),
        "complete": lambda: driver.complete([Completion(1, leased())]),
        "promote": driver.promote,
        "rescue": driver.rescue,
    }

    def leased() -> str:
        return driver.get([1])[0].lease_token or ""

    settings: dict[str, str] = {}
    for name, call in calls.items():
        statements.clear()
        call()
        settings[name] = next(sql for sql in statements if "synchronous" in sql)
    durable = {"enqueue", "cancel", "requeue"}
    assert settings == {
        name: f"PRAGMA synchronous = {'FULL' if name in durable else 'NORMAL'}" for name in calls
    }
    assert driver.get([1])[0].state == JobState.SUCCEEDED
    driver.close()


def test_a_duplicate_idempotency_key_is_refused_by_the_store_itself(tmp_path: Path) -> None:
    driver = SQLiteDriver(tmp_path / "keys.db")
    driver.enqueue([EnqueueRequest("task", idempotency_key="once")])
    driver.close()
    with sqlite3.connect(tmp_path / "keys.db") as conn:
        columns = "task, queue, state, args, kwargs, priority, run_at, attempt, max_attempts"
        insert = (
            f"INSERT INTO jobs ({columns}, created_at, idempotency_key) "
            "SELECT task, queue, state, args, kwargs, priority, run_at, attempt, max_attempts, "
            "created_at, idempotency_key FROM jobs"
        )
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(insert)
    conn.close()


def test_threads_sharing_one_store_never_lease_a_job_twice(tmp_path: Path) -> None:
    driver = SQLiteDriver(tmp_path / "threads.db", clock=FakeClock())
    driver.enqueue([EnqueueRequest("task", (n,)) for n in range(400)])
    leased: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while jobs := driver.lease(["default"], 7, 30.0, threading.current_thread().name):
                leased.extend(job.id for job in jobs)
                done = [Completion(job.id, job.lease_token or "", None) for job in jobs]
                assert driver.complete(done) == []
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(leased) == list(range(1, 401))
    assert driver.count() == {("default", JobState.SUCCEEDED): 400}
    driver.close()


def test_closing_while_other_threads_call_waits_for_them_then_refuses(tmp_path: Path) -> None:
    driver = SQLiteDriver(tmp_path / "busy.db")
    driver.enqueue([EnqueueRequest("task")])
    outcomes: list[BaseException] = []
    started = threading.Barrier(5)

    def read_until_closed() -> None:
        started.wait()
        try:
            while True:
                driver.count()
        except BaseException as exc:  # the one way out: the store was closed
            outcomes.append(exc)

    threads = [threading.Thread(target=read_until_closed) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    driver.close()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 4
    assert all(isinstance(exc, InvalidRequest) and "closed" in str(exc) for exc in outcomes)


@pytest.mark.timing
def test_waiting_returns_once_another_store_enqueues_and_not_before(tmp_path: Path) -> None:
    waiting = SQLiteDriver(tmp_path / "wait.db")
    producer = SQLiteDriver(tmp_path / "wait.db")
    started = time.monotonic()
    waiting.wait_for_jobs(["mail"], 0.2)
    assert time.monotonic() - started >= 0.2

    timer = threading.Timer(0.3, lambda: producer.enqueue([EnqueueRequest("send", queue="mail")]))
    started = time.monotonic()  # before the timer starts: the enqueue is >= 0.3 s later
    timer.start()
    waiting.wait_for_jobs(["mail"], EVENTUALLY)
    waited = time.monotonic() - started
    timer.join()
    assert 0.3 <= waited < EVENTUALLY  # not before the enqueue, nor at the timeout
    waiting.close()
    producer.close()


@pytest.mark.timing
def test_waiting_returns_at_once_when_a_scheduled_job_is_due(tmp_path: Path) -> None:
    clock = FakeClock()
    driver = SQLiteDriver(tmp_path / "due.db", clock=clock)
    driver.enqueue([EnqueueRequest("later", run_at=clock.now() + timedelta(seconds=60))])
    started = time.monotonic()
    driver.wait_for_jobs(["default"], 0.3)
    assert time.monotonic() - started >= 0.3
    clock.advance(60)
    started = time.monotonic()
    driver.wait_for_jobs(["default"], EVENTUALLY)
    assert time.monotonic() - started < EVENTUALLY  # returned for the due job, not the timeout
    driver.close()
