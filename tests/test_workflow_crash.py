"""A workflow survives worker processes killed with SIGKILL at random moments.

A workflow of at least 20 steps mixing chain, group and chord (a random shape
for each seed) runs under three worker processes while the test SIGKILLs one
at random moments, at least ten times, putting a fresh one to work each time,
until the workflow finishes (see :func:`workflow_crash_fleet.kill_until` for
how the kills are chosen).  Then, from the store and from the ledger the
handlers append to (see :mod:`workflow_crash_app`):

* every step succeeded and the workflow result is the one a plain Python
  evaluation of the same workflow gives;
* every step received exactly the input the workflow says, once;
* each step succeeded once: its final attempt ran once, to the end, and its
  result is the stored one; every earlier attempt ended with an expired lease
  and, if its handler ran at all, ran in a process the test killed.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from faults.fault_profile import SEEDS
from workflow_crash_app import STEPS, CrashApp, Store, make_app
from workflow_crash_fleet import Fleet, kill_until

import taskharbor as th
from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.canvas import Chain, Chord, Group, Item
from taskharbor.spec import FINISHED_JOB_STATES, JobRecord, JobState, WorkflowState
from taskharbor.spec.records import LEASE_EXPIRED_TYPE

MIN_STEPS = 20
MIN_KILLS = 10
KILL_EVERY = (0.2, 1.0)
"""Seconds between two kills (uniform), besides the kills planned at random points of progress."""
TIMEOUT = 60.0


# -- the workflow and what it must compute ------------------------------------------------


def random_workflow(tasks: CrashApp, rng: random.Random) -> Chain:
    """A chain that starts with one step, then random stages, until it has enough steps.

    Each stage is a step (sometimes immutable), a group or a chord whose members
    are steps, two-step chains or small groups; the first two stages are a
    group and a chord, in random order, so every shape is always there.
    """

    def step() -> th.Signature:
        task = rng.choice([tasks.add, tasks.mul])
        if rng.random() < 0.15:
            return task.si(rng.randrange(100), rng.randrange(2, 9))
        return task.s(rng.randrange(2, 9))

    def member() -> Item:
        shape = rng.random()
        if shape < 0.5:
            return step()
        if shape < 0.8:
            return th.chain(step(), step())
        return th.group(step(), step())

    def stage(kind: str) -> Item:
        if kind == "step":
            return step()
        members = [member() for _ in range(rng.randint(2, 5))]
        if kind == "group":
            return th.group(*members)
        return th.chord(members, tasks.total.s())

    kinds = rng.sample(["group", "chord"], 2)
    stages: list[Item] = [tasks.start.s(rng.randrange(1, 100))]
    while count_steps(th.chain(*stages)) < MIN_STEPS or kinds:
        stages.append(stage(kinds.pop() if kinds else rng.choice(["step", "group", "chord"])))
    return th.chain(*stages)


def count_steps(item: Item) -> int:
    match item:
        case th.Signature():
            return 1
        case Chain(elements=items) | Group(members=items):
            return sum(count_steps(element) for element in items)
        case Chord(header=header, callback=callback):
            return sum(count_steps(member) for member in header) + count_steps(callback)
    raise TypeError(f"not a workflow item: {item!r}")


def evaluate(item: Item, incoming: tuple[Any, ...], calls: list[tuple[str, list[Any]]]) -> Any:
    """What ``item`` computes when run in plain Python after an element that gave ``incoming``.

    This is the documented meaning of the shapes, written out independently of
    the engine: a step gets the previous result in front of its arguments
    (unless it is immutable); a chain threads results through; a group's
    members all get the same input and give the list of their results; a
    chord's callback gets the list of its header's results.  Each step's call
    (task name, arguments) is appended to ``calls``.
    """
    match item:
        case th.Signature(task=task, args=args, immutable=immutable):
            arguments = list(args) if immutable else [*incoming, *args]
            calls.append((task, arguments))
            return STEPS[task](*arguments)
        case Chain(elements=elements):
            for element in elements:
                incoming = (evaluate(element, incoming, calls),)
            return incoming[0]
        case Group(members=members):
            return [evaluate(member, incoming, calls) for member in members]
        case Chord(header=header, callback=callback):
            results = [evaluate(member, incoming, calls) for member in header]
            return evaluate(callback, (results,), calls)
    raise TypeError(f"not a workflow item: {item!r}")


def test_the_oracle_follows_the_documented_shapes(tmp_path: Path) -> None:
    tasks = make_app(Store("sqlite", str(tmp_path / "jobs.db")), tmp_path / "ledger")
    with tasks.app:
        workflow = th.chain(
            tasks.start.s(2),
            th.group(tasks.add.s(1), tasks.mul.si(5, 3)),  # [3, 15]
            th.chord([tasks.add.s(10), th.chain(tasks.mul.s(2), tasks.add.s(1))], tasks.total.s()),
        )
        # group -> [3, 15]; chord members get [3, 15] folded to 1*3 + 2*15 = 33:
        # add -> 43, chain -> 33*2 + 1 = 67; callback -> 1*43 + 2*67 = 177.
        calls: list[tuple[str, list[Any]]] = []
        assert evaluate(workflow, (), calls) == 177
        assert calls == [
            ("crash.start", [2]),
            ("crash.add", [2, 1]),
            ("crash.mul", [5, 3]),
            ("crash.add", [[3, 15], 10]),
            ("crash.mul", [[3, 15], 2]),
            ("crash.add", [66, 1]),
            ("crash.total", [[43, 67]]),
        ]
        assert count_steps(workflow) == 7


# -- the stores ---------------------------------------------------------------------------


@contextmanager
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    yield Store("sqlite", str(tmp_path / "jobs.db"))


@contextmanager
def postgres_store(tmp_path: Path) -> Iterator[Store]:
    skip_without_postgres()
    import psycopg

    from taskharbor.drivers.postgres import PostgresDriver

    schema = f"th_crash_{uuid.uuid4().hex[:12]}"
    try:
        driver = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
        try:
            driver.migrate()
        finally:
            driver.close()
        yield Store("postgres", POSTGRES_URL, schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


STORES = {"sqlite": sqlite_store, "postgres": postgres_store}


# -- the checks ---------------------------------------------------------------------------


def succeeded_steps(handle: th.WorkflowHandle) -> Callable[[], int | None]:
    """How many steps of the workflow have succeeded; None once it is no longer running."""

    def progress() -> int | None:
        status = handle.status()
        if status.state is not WorkflowState.RUNNING:
            return None
        return sum(1 for step in status.steps if step.state is JobState.SUCCEEDED)

    return progress


def read_ledger(path: Path) -> dict[int, list[dict[str, Any]]]:
    """The ledger's lines by job id."""
    by_job: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        by_job[entry["job"]].append(entry)
    return by_job


def check_step(job: JobRecord, ledger: list[dict[str, Any]], killed: set[int]) -> None:
    """The step succeeded once; every attempt before its last was lost to a kill."""
    where = f"job {job.id} ({job.task}, attempt {job.attempt})"
    assert job.state is JobState.SUCCEEDED, where
    assert (job.lease_token, job.finished_at is None) == (None, False), where
    assert {entry["attempt"] for entry in ledger} <= set(range(1, job.attempt + 1)), where
    last = [entry for entry in ledger if entry["attempt"] == job.attempt]
    assert [entry["event"] for entry in last] == ["start", "end"], f"{where}: {last}"
    assert last[1]["result"] == job.result, where
    earlier = [entry for entry in ledger if entry["attempt"] < job.attempt]
    assert all(entry["pid"] in killed for entry in earlier), f"{where}: {earlier} {killed}"
    lost = [(error.attempt, error.type) for error in job.errors]
    assert lost == [(attempt, LEASE_EXPIRED_TYPE) for attempt in range(1, job.attempt)], where


def kills_mid_handler(ledger: dict[int, list[dict[str, Any]]], killed: set[int]) -> int:
    """How many kills stopped a process while one of its handlers was running.

    A handler that a kill stopped wrote its ``start`` line and never its ``end``.
    """
    started: set[tuple[int, int, int]] = set()
    ended: set[tuple[int, int, int]] = set()
    for entries in ledger.values():
        for entry in entries:
            if entry["pid"] in killed:
                run = (entry["pid"], entry["job"], entry["attempt"])
                (started if entry["event"] == "start" else ended).add(run)
    return len({pid for pid, _, _ in started - ended})


def check_run(
    tasks: CrashApp, handle: th.WorkflowHandle, workflow: Item, ledger: Path, killed: set[int]
) -> None:
    status = handle.status()
    assert status.state is WorkflowState.SUCCEEDED
    calls: list[tuple[str, list[Any]]] = []
    assert handle.result() == evaluate(workflow, (), calls)
    jobs = tasks.app.driver.get([step.job_id for step in status.steps])

    def call(task: str, args: list[Any]) -> str:
        return json.dumps([task, args])

    assert Counter(call(job.task, list(job.args)) for job in jobs) == Counter(
        call(task, args) for task, args in calls
    ), "every step got its input once"
    by_job = read_ledger(ledger)
    for job in jobs:
        check_step(job, by_job[job.id], killed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "store_kind",
    [
        pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else [])
        for name in STORES
    ],
)
def test_a_workflow_survives_random_kills(store_kind: str, seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    with STORES[store_kind](tmp_path) as store:
        tasks = make_app(store, ledger)
        with tasks.app:
            workflow = random_workflow(tasks, rng)
            steps = count_steps(workflow)
            began = time.monotonic()
            handle = tasks.app.enqueue(workflow)
            with Fleet(store, ledger) as fleet:
                plan = rng.sample(range(steps - 1), MIN_KILLS)
                kill_until(fleet, succeeded_steps(handle), plan, rng, KILL_EVERY, TIMEOUT)
            killed = set(fleet.killed)
            interrupted = kills_mid_handler(read_ledger(ledger), killed)
            print(
                f"{store_kind} seed {seed}: {steps} steps in {time.monotonic() - began:.1f} s, "
                f"{len(killed)} kills, {interrupted} of them mid-handler"
            )
            assert len(killed) >= MIN_KILLS
            assert interrupted >= 1, "no kill landed in the middle of a handler"
            check_run(tasks, handle, workflow, ledger, killed)


# -- a failing workflow and its failure callback -----------------------------------------

FAILING_KILLS = 4


def callback_done(handle: th.WorkflowHandle) -> Callable[[], int | None]:
    """How many steps of the workflow have finished; None once they all have and its
    failure callback has succeeded."""

    def progress() -> int | None:
        status = handle.status()
        assert status.on_failure is not None
        finished = sum(1 for step in status.steps if step.state in FINISHED_JOB_STATES)
        if status.on_failure.state is JobState.SUCCEEDED and finished == len(status.steps):
            return None
        return finished

    return progress


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "store_kind",
    [
        pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else [])
        for name in STORES
    ],
)
def test_a_failure_callback_runs_once_through_random_kills(
    store_kind: str, seed: int, tmp_path: Path
) -> None:
    """Several steps of one group fail for good at about the same time on different
    workers, while workers are killed: the workflow fails, and its callback is
    released once (one failure in front of its arguments) and succeeds once."""
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    with STORES[store_kind](tmp_path) as store:
        tasks = make_app(store, ledger)
        with tasks.app:
            members = [tasks.add.s(k) for k in range(4)] + [tasks.broken.s(k) for k in range(4)]
            rng.shuffle(members)
            workflow = th.chain(tasks.start.s(1), th.group(*members), tasks.total.s())
            handle = tasks.app.enqueue(workflow.on_failure(tasks.alert.s("ops")))
            with Fleet(store, ledger) as fleet:
                plan = rng.sample(range(8), FAILING_KILLS)
                kill_until(fleet, callback_done(handle), plan, rng, KILL_EVERY, TIMEOUT)
            killed = set(fleet.killed)
            assert len(killed) >= FAILING_KILLS
            status = handle.status()
            assert status.state is WorkflowState.FAILED
            assert status.on_failure is not None
            by_job = read_ledger(ledger)
            callback = tasks.app.driver.get([status.on_failure.job_id])[0]
            check_step(callback, by_job[callback.id], killed)
            failure, *own = callback.args
            assert own == ["ops"], "the failure was put in front of the callback's args once"
            jobs = tasks.app.driver.get([step.job_id for step in status.steps])
            dead = {job.id: job for job in jobs if job.state is JobState.DEAD}
            assert {job.task for job in dead.values()} == {"crash.broken"}
            assert failure["job_id"] in dead and callback.result == failure["job_id"]
            assert failure["type"] == "PermanentError"
            for job in jobs:
                if job.task == "crash.add":
                    check_step(job, by_job[job.id], killed)
            assert jobs[-1].state is JobState.CANCELLED
