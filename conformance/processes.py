"""Rules only several processes can test: a fleet sharing one store, and a
worker process killed in the middle of its batch.

Both harnesses are plain functions (usable outside pytest too) driven by an
*opener*: a callable that opens a handle on one store, the same store at
every call, from whichever process calls it (:data:`OpenStore`).  The
harnesses fork their worker processes, which call the opener themselves and
never touch the parent's handle.  Workers are plain loops over the SPI
(``lease``, then ``complete`` or ``heartbeat``), not the engine's ``Worker``:
what is tested is the store.  Each worker writes a *ledger* (one JSON line per
lease and per refused report) that the parent checks when they are done.

* :func:`run_fleet` (capability ``multi_process``): N processes lease and
  complete plain jobs and a wide chord together.  No job is leased twice, no
  report is refused, every job ends ``succeeded`` (``count`` exact), and the
  chord's callback is released once, with every member's result in order.
* :func:`run_crash` (capabilities ``persistent`` and ``multi_process``): a
  worker process leases a batch, completes part of it, and is killed with
  ``SIGKILL`` while it heartbeats the rest.  A surviving worker on a new
  handle keeps jobs of its own alive meanwhile, rescues exactly the dead
  worker's jobs when their leases run out, and finishes everything: every job
  ends ``succeeded``, those completed before the kill ran once, the others
  twice with the lease-expired error recorded.

Both run on the store's own clock (the opener's), so the crash harness waits
for real leases to expire: its plan's ``lease_seconds`` bounds that wait.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from taskharbor.spec import (
    Completion,
    Driver,
    EnqueueRequest,
    JobFilter,
    JobRecord,
    JobState,
    LeaseRef,
    RetryPolicy,
    StepSpec,
    WorkflowGraph,
    WorkflowState,
)
from taskharbor.spec.records import LEASE_EXPIRED_TYPE

OpenStore = Callable[[], Driver]
"""Opens a handle on one shared store (the same store at every call, in any
process).  The store is empty and migrated, or migrated by the first call."""

QUEUE = "processes"
"""The queue every job of the harnesses runs in."""

CALLBACK = "fleet.callback"

SURVIVOR_LEASE_SECONDS = 600.0
"""The lease of the crash harness's surviving worker: it must not expire in the test."""


@dataclass(frozen=True, slots=True)
class FleetPlan:
    processes: int = 4
    jobs: int = 200
    """Plain jobs, besides the chord."""
    chord_width: int = 25
    """Members of the chord whose callback must be released once."""
    batch: int = 8
    """How many jobs a worker leases per call."""
    lease_seconds: float = 600.0
    """Long enough that no lease expires in a healthy run."""
    timeout: float = 300.0
    """How long the fleet may take at most, on a loaded machine: a liveness bound only."""


@dataclass(frozen=True, slots=True)
class CrashPlan:
    jobs: int = 30
    batch: int = 10
    """How many jobs the doomed worker leases in its one batch."""
    completed_before_kill: int = 4
    """How many of them it completes (one call each) before it is killed."""
    lease_seconds: float = 1.0
    """The doomed worker's lease: how long recovery has to wait for it to expire."""
    timeout: float = 300.0
    """A liveness bound on every wait, on a loaded machine."""


def run_fleet(open_store: OpenStore, ledgers: Path, plan: FleetPlan = FleetPlan()) -> None:
    """Run a fleet of worker processes on one store and check its ledger.

    ``ledgers`` is an empty folder for the workers' ledgers.  Raises
    ``AssertionError`` naming what went wrong.
    """
    store = open_store()
    try:
        plain = store.enqueue(
            [EnqueueRequest("fleet.job", queue=QUEUE, args=(n,)) for n in range(plan.jobs)]
        )
        width = plan.chord_width
        members = [
            StepSpec(EnqueueRequest("fleet.member", queue=QUEUE, args=(n,))) for n in range(width)
        ]
        callback = StepSpec(
            EnqueueRequest(CALLBACK, queue=QUEUE),
            after=tuple(range(width)),
            input=list(range(width)),
        )
        chord = store.enqueue_workflow(WorkflowGraph((*members, callback), result=width))
        expected = {result.job.id for result in plain} | set(chord.steps)
        fork = multiprocessing.get_context("fork")
        workers = [
            fork.Process(
                target=_fleet_worker,
                args=(open_store, ledgers / f"worker-{n}.jsonl", f"fleet-{n}", plan, len(expected)),
                name=f"taskharbor-fleet-{n}",
            )
            for n in range(plan.processes)
        ]
        _run_all(workers, plan.timeout)
        entries = list(_read_ledgers(ledgers))
        leases = Counter(entry["job"] for entry in entries if entry["kind"] == "leased")
        twice = sorted(job_id for job_id, times in leases.items() if times > 1)
        assert twice == [], f"jobs leased more than once by the fleet: {twice}"
        assert set(leases) == expected, f"jobs never leased: {sorted(expected - set(leases))}"
        refused = [entry for entry in entries if entry["kind"] == "refused"]
        assert refused == [], f"reports refused although no lease expired: {refused}"
        assert dict(store.count()) == {(QUEUE, JobState.SUCCEEDED): len(expected)}
        (called,) = store.get([chord.steps[-1]])
        assert called.args == (list(range(width)),), (
            "the callback's input is not the members' results"
        )
        assert store.get_workflow(chord.id).state is WorkflowState.SUCCEEDED
    finally:
        store.close()


RETRY_AT_ONCE = RetryPolicy("constant", base=0.0, jitter=False)
"""The crash jobs' retry policy: a rescued job is due again at once."""


def run_crash(open_store: OpenStore, ledgers: Path, plan: CrashPlan = CrashPlan()) -> None:
    """Kill a worker process mid-batch with ``SIGKILL``; check every job is recovered.

    ``ledgers`` is an empty folder for the doomed worker's ledger.  Raises
    ``AssertionError`` naming what went wrong.
    """
    store = open_store()
    try:
        enqueued = store.enqueue(
            [
                EnqueueRequest("crash.job", queue=QUEUE, args=(n,), retry=RETRY_AT_ONCE)
                for n in range(plan.jobs)
            ]
        )
    finally:
        store.close()
    ledger = ledgers / "doomed.jsonl"
    fork = multiprocessing.get_context("fork")
    ready, told = fork.Pipe(duplex=False)
    doomed = fork.Process(
        target=_doomed_worker, args=(open_store, ledger, plan, told), name="taskharbor-doomed"
    )
    doomed.start()
    try:
        assert ready.poll(plan.timeout), "the doomed worker never finished its first reports"
        ready.recv()
    finally:
        assert doomed.pid is not None
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(plan.timeout)
    assert doomed.exitcode == -signal.SIGKILL, f"the doomed worker ended {doomed.exitcode}"
    entries = list(_read_ledgers(ledgers))
    held = {entry["job"] for entry in entries if entry["kind"] == "leased"}
    done = {entry["job"] for entry in entries if entry["kind"] == "completed"}
    assert len(held) == plan.batch and len(done) == plan.completed_before_kill

    store = open_store()  # a new handle: what the dead process committed is in the store
    try:
        _recover(store, plan, held - done)
        jobs = {job.id: job for job in store.list_jobs(JobFilter(queue=QUEUE, limit=plan.jobs + 1))}
        assert set(jobs) == {result.job.id for result in enqueued}, "jobs lost in the crash"
        assert dict(store.count()) == {(QUEUE, JobState.SUCCEEDED): plan.jobs}
        for job_id, job in jobs.items():
            if job_id in held - done:
                assert job.attempt == 2, f"job {job_id} held at the kill ran {job.attempt} times"
                assert [error.type for error in job.errors] == [LEASE_EXPIRED_TYPE]
            else:
                assert (job.attempt, job.errors) == (1, ()), f"job {job_id} ran again: {job}"
    finally:
        store.close()


# -- inside the worker processes ---------------------------------------------------


def _fleet_worker(
    open_store: OpenStore, ledger: Path, worker_id: str, plan: FleetPlan, total: int
) -> None:
    store = open_store()
    deadline = time.monotonic() + plan.timeout
    with ledger.open("a", encoding="utf-8") as out:
        while time.monotonic() < deadline:
            jobs = store.lease([QUEUE], plan.batch, plan.lease_seconds, worker_id)
            if not jobs:
                if store.count().get((QUEUE, JobState.SUCCEEDED), 0) == total:
                    break
                store.wait_for_jobs([QUEUE], 0.05)
                continue
            _write(out, [{"kind": "leased", "job": job.id} for job in jobs])
            refused = store.complete(
                [Completion(job.id, _token(job), _result(job)) for job in jobs]
            )
            _write(out, [{"kind": "refused", "job": lost.job_id} for lost in refused])
    store.close()


def _doomed_worker(open_store: OpenStore, ledger: Path, plan: CrashPlan, tell: Connection) -> None:
    store = open_store()
    jobs = store.lease([QUEUE], plan.batch, plan.lease_seconds, "doomed")
    with ledger.open("a", encoding="utf-8") as out:
        _write(out, [{"kind": "leased", "job": job.id} for job in jobs])
        for job in jobs[: plan.completed_before_kill]:
            assert store.complete([Completion(job.id, _token(job), _result(job))]) == []
            _write(out, [{"kind": "completed", "job": job.id}])
    tell.send("reported")
    rest = [LeaseRef(job.id, _token(job)) for job in jobs[plan.completed_before_kill :]]
    while True:  # a worker busy with the rest of its batch, until it is killed
        store.heartbeat(rest, plan.lease_seconds)


def _recover(store: Driver, plan: CrashPlan, orphaned: set[int]) -> None:
    """What a surviving worker does: it keeps its own jobs alive (heartbeats)
    while it waits for the dead worker's leases to run out, rescues exactly
    those, and then runs everything that is ready."""
    deadline = time.monotonic() + plan.timeout
    own = store.lease([QUEUE], 2, SURVIVOR_LEASE_SECONDS, "survivor")
    rescued: list[int] = []
    while set(rescued) < orphaned:
        assert time.monotonic() < deadline, (
            f"the dead worker's jobs {sorted(orphaned - set(rescued))} were never rescued"
        )
        beat = store.heartbeat(
            [LeaseRef(job.id, _token(job)) for job in own], SURVIVOR_LEASE_SECONDS
        )
        assert beat.lost == (), f"the survivor lost its own leases: {beat.lost}"
        rescued += store.rescue()
        time.sleep(min(0.05, plan.lease_seconds))
    assert sorted(rescued) == sorted(orphaned), f"rescued {rescued}, expected {sorted(orphaned)}"
    while own:
        assert store.complete([Completion(job.id, _token(job), _result(job)) for job in own]) == []
        store.promote()  # a rescued job waits in retrying; its policy makes it due at once
        own = store.lease([QUEUE], plan.jobs, SURVIVOR_LEASE_SECONDS, "survivor")


def _token(job: JobRecord) -> str:
    assert job.lease_token is not None, f"job {job.id} was leased without a token"
    return job.lease_token


def _result(job: JobRecord) -> Any:
    """Each job's result: its first argument (the callback's is the members' results)."""
    return job.args[0]


def _write(out: Any, entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        out.write(json.dumps(entry) + "\n")
    out.flush()


def _read_ledgers(folder: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            yield from (json.loads(line) for line in lines if line.strip())


def _run_all(workers: list[Any], timeout: float) -> None:
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    stuck = [worker.name for worker in workers if worker.is_alive()]
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()
    assert stuck == [], f"workers still running after {timeout} s: {stuck}"
    failed = {worker.name: worker.exitcode for worker in workers if worker.exitcode != 0}
    assert failed == {}, f"workers failed (exit codes): {failed}"


# -- the rules, for the conformance suite ------------------------------------------


class ProcessRules:
    """The fleet and the crash, on a store from the ``open_shared_store`` hook.

    A driver's test class gives the hook as a fixture returning an
    :data:`OpenStore` on a fresh store (and cleans it up after ``yield``);
    without it, or without the capabilities a rule needs, the rule is
    skipped, naming what is missing.
    """

    @pytest.fixture
    def open_shared_store(self) -> OpenStore | None:
        """:data:`OpenStore` on a fresh store, or None: the process rules are skipped."""
        return None

    def _opener(self, open_shared_store: OpenStore | None, *capabilities: str) -> OpenStore:
        if open_shared_store is None:
            pytest.skip("the driver's test class gives no 'open_shared_store' fixture (a hook)")
        store = open_shared_store()
        try:
            store.migrate()
            missing = [name for name in capabilities if not getattr(store.capabilities, name)]
        finally:
            store.close()
        if missing:
            pytest.skip(f"{type(store).__name__} does not declare capability {missing[0]!r}")
        return open_shared_store

    def test_a_fleet_of_processes_shares_one_store_without_leasing_a_job_twice(
        self, open_shared_store: OpenStore | None, tmp_path: Path
    ) -> None:
        run_fleet(self._opener(open_shared_store, "multi_process"), tmp_path)

    def test_a_worker_killed_mid_batch_loses_no_job(
        self, open_shared_store: OpenStore | None, tmp_path: Path
    ) -> None:
        run_crash(self._opener(open_shared_store, "persistent", "multi_process"), tmp_path)
