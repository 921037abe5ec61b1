"""A chord's callback is released exactly once when its 50 members finish at the same instant;
a workflow's failure callback, once when its steps die at the same instant; a partial
chord's callback, once when its members succeed and die at the same instant.

Several threads, each with its own connection to the store (SQLite,
PostgreSQL and Redis: one driver per thread on the same file, schema or key
prefix; memory: the threads share the one driver), wait at a barrier and then complete the
members they hold, all together.  The last completions race to observe "every
member has succeeded"; a lost race leaves the callback ``pending`` forever, a
double release puts the members' results in front of its arguments twice (or
raises ``InvalidTransition``), a stale read releases it with a result missing.
Then the same threads race to lease: exactly one of them gets the callback.

Half of the rounds complete one member per call (many short transactions), the
other half one batch per thread (a few long ones): both must release once.
The failure-callback rounds do the same with permanent failures of a group's
members: only the transaction that sees the workflow become ``failed`` may
release the callback, with one failure in front of its arguments.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from driver_registry import (
    POSTGRES_URL,
    REDIS_URL,
    drop_redis_prefix,
    skip_without_postgres,
    skip_without_redis,
)
from taskharbor.spec import (
    Completion,
    Driver,
    EnqueueRequest,
    ErrorReport,
    Failure,
    FakeClock,
    JobRecord,
    JobState,
    StepSpec,
    WorkflowGraph,
    WorkflowRecord,
    WorkflowState,
)
from taskharbor.spec.records import map_ref

MEMBERS = 50
THREADS = 6
ROUNDS = 30
LEASE_SECONDS = 30.0

T = TypeVar("T")


# -- one connection per thread, for each store ------------------------------------------


@contextmanager
def memory_connections(tmp_path: Path, clock: FakeClock) -> Iterator[list[Driver]]:
    from taskharbor.drivers.memory import MemoryDriver

    driver = MemoryDriver(clock=clock)
    yield [driver] * THREADS


@contextmanager
def sqlite_connections(tmp_path: Path, clock: FakeClock) -> Iterator[list[Driver]]:
    from taskharbor.drivers.sqlite import SQLiteDriver

    path = tmp_path / "chords.db"
    drivers: list[Driver] = [SQLiteDriver(path, clock=clock) for _ in range(THREADS)]
    try:
        yield drivers
    finally:
        for driver in drivers:
            driver.close()


@contextmanager
def postgres_connections(tmp_path: Path, clock: FakeClock) -> Iterator[list[Driver]]:
    skip_without_postgres()
    import psycopg

    from taskharbor.drivers.postgres import PostgresDriver

    schema = f"th_chord_{uuid.uuid4().hex[:12]}"
    drivers: list[Driver] = []
    try:
        for _ in range(THREADS):
            drivers.append(
                PostgresDriver(
                    POSTGRES_URL, schema=schema, clock=clock, notifications=False, pool_size=1
                )
            )
        drivers[0].migrate()
        yield drivers
    finally:
        for driver in drivers:
            driver.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def redis_connections(tmp_path: Path, clock: FakeClock) -> Iterator[list[Driver]]:
    skip_without_redis()
    from taskharbor.drivers.redis import RedisDriver

    prefix = f"th_chord_{uuid.uuid4().hex[:12]}"
    drivers: list[Driver] = [
        RedisDriver(REDIS_URL, prefix=prefix, clock=clock) for _ in range(THREADS)
    ]
    try:
        yield drivers
    finally:
        for driver in drivers:
            driver.close()
        drop_redis_prefix(prefix)


STORES = {
    "memory": memory_connections,
    "sqlite": sqlite_connections,
    "postgres": postgres_connections,
    "redis": redis_connections,
}
STORE_PARAMS = [
    pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else [])
    for name in STORES
]


# -- racing threads ----------------------------------------------------------------------


def deal(
    drivers: Sequence[Driver], jobs: list[JobRecord], rng: random.Random
) -> list[list[JobRecord]]:
    """``jobs`` shuffled and dealt out, one share per racing thread (one per driver)."""
    rng.shuffle(jobs)
    return [jobs[index :: len(drivers)] for index in range(len(drivers))]


def race(drivers: Sequence[Driver], work: Callable[[int, Driver], T]) -> list[T]:
    """Run ``work(index, driver)`` on one thread per driver, released together by a barrier.

    Returns each thread's value in thread order; re-raises the first error a thread hit.
    """
    start = threading.Barrier(len(drivers))
    values: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int, driver: Driver) -> None:
        try:
            start.wait(timeout=30)
            values[index] = work(index, driver)
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(index, driver), name=f"racer-{index}")
        for index, driver in enumerate(drivers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    if errors:
        raise errors[0]
    return [values[index] for index in range(len(drivers))]


# -- one round ---------------------------------------------------------------------------


def member_result(round_number: int, member: int) -> str:
    return f"round {round_number} member {member}"


def chord_graph(round_number: int) -> WorkflowGraph:
    """``MEMBERS`` members, then a callback that waits for all and takes their results."""
    members = tuple(
        StepSpec(EnqueueRequest("chord.member", args=(round_number, index)))
        for index in range(MEMBERS)
    )
    callback = StepSpec(
        EnqueueRequest("chord.callback", args=(round_number,)),
        after=tuple(range(MEMBERS)),
        input=list(range(MEMBERS)),
    )
    return WorkflowGraph(steps=(*members, callback), result=MEMBERS)


def complete_members(
    drivers: Sequence[Driver], members: list[JobRecord], rng: random.Random, batched: bool
) -> None:
    """Deal the members out to the threads at random and complete them all at once."""
    shares = deal(drivers, members, rng)

    def completions(job: JobRecord) -> Completion:
        round_number, index = job.args
        assert job.lease_token is not None
        return Completion(job.id, job.lease_token, member_result(round_number, index))

    def complete(index: int, driver: Driver) -> list[object]:
        share = [completions(job) for job in shares[index]]
        if batched:
            return list(driver.complete(share))
        return [lost for item in share for lost in driver.complete([item])]

    refused = race(drivers, complete)
    assert refused == [[]] * len(drivers), "live leases were refused"


def play_round(
    drivers: Sequence[Driver], clock: FakeClock, round_number: int, rng: random.Random
) -> None:
    main = drivers[0]
    workflow = main.enqueue_workflow(chord_graph(round_number))
    *member_ids, callback_id = workflow.steps
    members = main.lease(["default"], MEMBERS + 1, LEASE_SECONDS, "leaser")
    assert sorted(job.id for job in members) == member_ids
    (waiting,) = main.get([callback_id])
    assert (waiting.state, waiting.args) == (JobState.PENDING, (round_number,))

    released_at = clock.advance(1.0)
    complete_members(drivers, members, rng, batched=round_number % 2 == 1)

    (callback,) = main.get([callback_id])
    expected_input = [member_result(round_number, index) for index in range(MEMBERS)]
    assert callback.state is JobState.AVAILABLE, f"round {round_number}: callback {callback.state}"
    assert callback.args == (expected_input, round_number), "the input was put in front once"
    assert (callback.attempt, callback.errors, callback.run_at) == (0, (), released_at)
    assert main.get_workflow(workflow.id).state is WorkflowState.RUNNING

    leased = race(
        drivers,
        lambda index, driver: driver.lease(["default"], MEMBERS, LEASE_SECONDS, f"racer-{index}"),
    )
    winners = [job for batch in leased for job in batch]
    assert [job.id for job in winners] == [callback_id], "the callback is leased exactly once"
    (winner,) = winners
    assert winner.attempt == 1 and winner.lease_token is not None
    assert main.complete([Completion(callback_id, winner.lease_token, round_number)]) == []

    check_succeeded(main, main.get_workflow(workflow.id), round_number)


def check_succeeded(driver: Driver, workflow: WorkflowRecord, round_number: int) -> None:
    assert workflow.state is WorkflowState.SUCCEEDED
    jobs = driver.get(workflow.steps)
    assert all(job.state is JobState.SUCCEEDED for job in jobs)
    assert [job.result for job in jobs[:-1]] == [
        member_result(round_number, index) for index in range(MEMBERS)
    ]
    assert map_ref(workflow.result, {job.id: job.result for job in jobs}) == round_number


@pytest.mark.parametrize("store", STORE_PARAMS)
def test_the_callback_is_released_once_every_time(store: str, tmp_path: Path) -> None:
    clock = FakeClock()
    rng = random.Random(f"chord race on {store}")
    with STORES[store](tmp_path, clock) as drivers:
        for round_number in range(ROUNDS):
            play_round(drivers, clock, round_number, rng)


def failing_graph(round_number: int) -> WorkflowGraph:
    """A group of ``MEMBERS`` members with a failure callback."""
    members = tuple(
        StepSpec(EnqueueRequest("group.member", args=(round_number, index)))
        for index in range(MEMBERS)
    )
    alert = EnqueueRequest("group.alert", args=(round_number,))
    return WorkflowGraph(steps=members, result=list(range(MEMBERS)), on_failure=alert)


def play_failing_round(
    drivers: Sequence[Driver], clock: FakeClock, round_number: int, rng: random.Random
) -> None:
    main = drivers[0]
    workflow = main.enqueue_workflow(failing_graph(round_number))
    assert workflow.on_failure is not None
    members = main.lease(["default"], MEMBERS + 1, LEASE_SECONDS, "leaser")
    assert sorted(job.id for job in members) == list(workflow.steps)
    shares = deal(drivers, members, rng)
    error = ErrorReport("RuntimeError", f"round {round_number}")

    def fail(index: int, driver: Driver) -> list[object]:
        failures = [
            Failure(job.id, str(job.lease_token), error, permanent=True) for job in shares[index]
        ]
        if round_number % 2:
            return list(driver.fail(failures))
        return [lost for item in failures for lost in driver.fail([item])]

    clock.advance(1.0)
    assert race(drivers, fail) == [[]] * len(drivers), "live leases were refused"
    assert main.get_workflow(workflow.id).state is WorkflowState.FAILED
    (callback,) = main.get([workflow.on_failure])
    assert callback.state is JobState.AVAILABLE, f"round {round_number}: callback {callback.state}"
    failure, *own = callback.args
    assert own == [round_number], "the failure was put in front once"
    assert failure["job_id"] in workflow.steps and failure["message"] == f"round {round_number}"
    leased = race(
        drivers,
        lambda index, driver: driver.lease(["default"], MEMBERS, LEASE_SECONDS, f"racer-{index}"),
    )
    assert [job.id for batch in leased for job in batch] == [workflow.on_failure]


@pytest.mark.parametrize("store", STORE_PARAMS)
def test_the_failure_callback_is_released_once_every_time(store: str, tmp_path: Path) -> None:
    clock = FakeClock()
    rng = random.Random(f"failure race on {store}")
    with STORES[store](tmp_path, clock) as drivers:
        for round_number in range(ROUNDS // 3):
            play_failing_round(drivers, clock, round_number, rng)


def partial_graph(round_number: int) -> WorkflowGraph:
    """``chord_graph`` whose callback runs over the members that succeeded."""
    graph = chord_graph(round_number)
    callback = dataclasses.replace(graph.steps[-1], partial=True)
    return dataclasses.replace(graph, steps=(*graph.steps[:-1], callback))


def play_partial_round(
    drivers: Sequence[Driver], clock: FakeClock, round_number: int, rng: random.Random
) -> None:
    main = drivers[0]
    workflow = main.enqueue_workflow(partial_graph(round_number))
    *member_ids, callback_id = workflow.steps
    members = main.lease(["default"], MEMBERS + 1, LEASE_SECONDS, "leaser")
    shares = deal(drivers, members, rng)
    doomed = {job.id for job in members[: MEMBERS // 3]}  # dealing shuffled them
    error = ErrorReport("RuntimeError", f"round {round_number}")

    def end(index: int, driver: Driver) -> list[object]:
        refused: list[object] = []
        for job in shares[index]:
            token = str(job.lease_token)
            if job.id in doomed:
                refused += driver.fail([Failure(job.id, token, error, permanent=True)])
            else:
                result = member_result(*job.args)
                refused += driver.complete([Completion(job.id, token, result)])
        return refused

    clock.advance(1.0)
    assert race(drivers, end) == [[]] * len(drivers), "live leases were refused"
    (callback,) = main.get([callback_id])
    assert callback.state is JobState.AVAILABLE, f"round {round_number}: callback {callback.state}"
    results, failures, *own = callback.args
    assert own == [round_number], "the input was put in front once"
    assert results == [
        member_result(round_number, index)
        for index, job_id in enumerate(member_ids)
        if job_id not in doomed
    ]
    assert [failure["job_id"] for failure in failures] == sorted(doomed)
    assert main.get_workflow(workflow.id).state is WorkflowState.RUNNING
    (winner,) = main.lease(["default"], MEMBERS, LEASE_SECONDS, "leaser")
    assert winner.id == callback_id
    assert main.complete([Completion(callback_id, str(winner.lease_token), round_number)]) == []
    assert main.get_workflow(workflow.id).state is WorkflowState.SUCCEEDED


@pytest.mark.parametrize("store", STORE_PARAMS)
def test_a_partial_callback_is_released_once_every_time(store: str, tmp_path: Path) -> None:
    clock = FakeClock()
    rng = random.Random(f"partial race on {store}")
    with STORES[store](tmp_path, clock) as drivers:
        for round_number in range(ROUNDS // 3):
            play_partial_round(drivers, clock, round_number, rng)
