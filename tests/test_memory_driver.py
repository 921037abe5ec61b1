"""What is specific to the in-memory driver, beyond the shared conformance suite.

Thread safety (concurrent leases, concurrent completes of a chord's members),
waking idle workers through ``wait_for_jobs``, the indexes behind lease,
promote, rescue and prune (order kept across lazily invalidated entries, no
scan of the whole store), payload isolation, and one quick pass through every
SPI method.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from test_engine_support import EVENTUALLY

from taskharbor.drivers.memory import MemoryDriver
from taskharbor.drivers.memory.index import LazyHeap
from taskharbor.drivers.memory.rows import JobRow
from taskharbor.spec import (
    Capabilities,
    Completion,
    EnqueueRequest,
    ErrorReport,
    Failure,
    FakeClock,
    FinishedCount,
    InvalidRequest,
    InvalidTransition,
    JobFilter,
    JobNotFound,
    JobRecord,
    JobState,
    LeaseLost,
    LeaseRef,
    RetryPolicy,
    SnoozeRequest,
    StepSpec,
    WorkflowGraph,
    WorkflowState,
    minute_of,
)

BOOM = ErrorReport("RuntimeError", "boom")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, 12, 0, 0, 500, tzinfo=UTC))


@pytest.fixture
def driver(clock: FakeClock) -> MemoryDriver:
    return MemoryDriver(clock)


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    """Switch threads as often as possible, so that unlocked races would show."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def enqueue(driver: MemoryDriver, count: int = 1, **fields: Any) -> list[JobRecord]:
    requests = [EnqueueRequest(fields.pop("task", "task"), **fields) for _ in range(count)]
    return [result.job for result in driver.enqueue(requests)]


def lease_all(driver: MemoryDriver, queues: list[str], batch: int = 100) -> list[JobRecord]:
    leased: list[JobRecord] = []
    while chunk := driver.lease(queues, batch, 30.0, "w"):
        leased.extend(chunk)
    return leased


def lease_order_key(job: JobRecord) -> tuple[int, datetime, int]:
    return (-job.priority, job.run_at, job.id)


def chord_graph(members: int) -> WorkflowGraph:
    steps = [StepSpec(EnqueueRequest("member", args=(index,))) for index in range(members)]
    header = tuple(range(members))
    steps.append(StepSpec(EnqueueRequest("callback", queue="callbacks"), header, list(header)))
    return WorkflowGraph(tuple(steps), result=members)


def run_together(actions: list[Callable[[], object]]) -> list[BaseException]:
    """Run each action in its own thread, all released at once; return what they raised."""
    barrier = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action: Callable[[], object]) -> None:
        barrier.wait()
        try:
            action()
        except BaseException as exc:  # reported to the test, which fails on it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=EVENTUALLY)
        assert not thread.is_alive(), "a racing call never returned"
    return errors


# -- concurrency -----------------------------------------------------------------


@pytest.mark.usefixtures("eager_thread_switches")
def test_concurrent_leases_never_hand_out_a_job_twice(driver: MemoryDriver) -> None:
    jobs = enqueue(driver, 3000)
    taken: list[list[JobRecord]] = [[] for _ in range(8)]

    def worker(mine: list[JobRecord]) -> Callable[[], None]:
        def take() -> None:
            while chunk := driver.lease(["default"], 7, 30.0, f"w{id(mine)}"):
                mine.extend(chunk)

        return take

    assert run_together([worker(mine) for mine in taken]) == []
    leased_ids = [job.id for mine in taken for job in mine]
    assert len(leased_ids) == len(set(leased_ids)) == len(jobs)
    assert len({job.lease_token for mine in taken for job in mine}) == len(jobs)


@pytest.mark.usefixtures("eager_thread_switches")
@pytest.mark.parametrize("members", [2, 12, 30])
def test_concurrent_completes_of_a_chord_release_its_callback_once(
    driver: MemoryDriver, members: int
) -> None:
    record = driver.enqueue_workflow(chord_graph(members))
    leased = sorted(lease_all(driver, ["default"]), key=lambda job: job.id)
    assert len(leased) == members

    def complete(job: JobRecord) -> Callable[[], object]:
        assert job.lease_token is not None
        token = job.lease_token
        return lambda: driver.complete([Completion(job.id, token, f"r{job.args[0]}")])

    assert run_together([complete(job) for job in leased]) == []
    callback = driver.get([record.steps[-1]])[0]
    assert callback.state is JobState.AVAILABLE
    assert callback.args == ([f"r{index}" for index in range(members)],)
    assert [job.id for job in lease_all(driver, ["callbacks"])] == [callback.id]


@pytest.mark.usefixtures("eager_thread_switches")
def test_concurrent_cancels_and_leases_agree_on_every_job(driver: MemoryDriver) -> None:
    jobs = enqueue(driver, 600)
    leased: list[JobRecord] = []
    refused: list[int] = []

    def cancel_each() -> None:
        for job in jobs:
            try:
                driver.cancel([job.id])
            except InvalidTransition:
                refused.append(job.id)

    def lease_each() -> None:
        while chunk := driver.lease(["default"], 5, 30.0, "w"):
            leased.extend(chunk)

    assert run_together([cancel_each, lease_each]) == []
    assert refused == []  # a leased job is running: cancel only asks it to stop
    stored = {job.id: job for job in driver.get([job.id for job in jobs])}
    for job in leased:
        assert stored[job.id].state is JobState.RUNNING
    cancelled = [job for job in stored.values() if job.state is JobState.CANCELLED]
    assert len(cancelled) + len(leased) == len(jobs)


# -- waking idle workers -----------------------------------------------------------


def wait_in_thread(driver: MemoryDriver, queues: list[str], timeout: float) -> Iterator[float]:
    """Start ``wait_for_jobs`` in a thread; yields once it waits, then the seconds it took."""
    started = threading.Event()
    elapsed: list[float] = []

    def wait() -> None:
        started.set()
        begin = time.monotonic()
        driver.wait_for_jobs(queues, timeout)
        elapsed.append(time.monotonic() - begin)

    thread = threading.Thread(target=wait)
    thread.start()
    started.wait()
    time.sleep(0.05)  # let the thread reach the condition's wait
    yield 0.0
    thread.join(timeout + 5)
    yield elapsed[0]


def make_available_by_enqueue(driver: MemoryDriver, clock: FakeClock) -> Callable[[], object]:
    return lambda: enqueue(driver)


def make_available_by_promote(driver: MemoryDriver, clock: FakeClock) -> Callable[[], object]:
    enqueue(driver, run_at=clock.now() + timedelta(seconds=10))

    def promote() -> None:
        clock.advance(10)
        driver.promote()

    return promote


def make_available_by_requeue(driver: MemoryDriver, clock: FakeClock) -> Callable[[], object]:
    (job,) = enqueue(driver)
    driver.cancel([job.id])
    return lambda: driver.requeue([job.id])


def make_available_by_rescue(driver: MemoryDriver, clock: FakeClock) -> Callable[[], object]:
    """A rescued job waits its retry delay in ``retrying``; promote makes it available."""
    enqueue(driver, retry=RetryPolicy("constant", base=0, jitter=False))
    driver.lease(["default"], 1, 5.0, "w")

    def rescue() -> None:
        clock.advance(5)
        driver.rescue()
        driver.promote()

    return rescue


def make_available_by_release(driver: MemoryDriver, clock: FakeClock) -> Callable[[], object]:
    first = StepSpec(EnqueueRequest("first", queue="elsewhere"))
    second = StepSpec(EnqueueRequest("second"), after=(0,))
    driver.enqueue_workflow(WorkflowGraph((first, second), result=1))
    (leased,) = driver.lease(["elsewhere"], 1, 30.0, "w")
    assert leased.lease_token is not None
    token = leased.lease_token
    return lambda: driver.complete([Completion(leased.id, token, None)])


@pytest.mark.timing
@pytest.mark.parametrize(
    "make_available",
    [
        make_available_by_enqueue,
        make_available_by_promote,
        make_available_by_requeue,
        make_available_by_rescue,
        make_available_by_release,
    ],
)
def test_wait_for_jobs_wakes_as_soon_as_a_job_becomes_available(
    driver: MemoryDriver,
    clock: FakeClock,
    make_available: Callable[[MemoryDriver, FakeClock], Callable[[], object]],
) -> None:
    action = make_available(driver, clock)
    waiting = wait_in_thread(driver, ["default"], timeout=EVENTUALLY)
    next(waiting)
    action()
    assert next(waiting) < EVENTUALLY  # woken: it did not wait out its timeout


@pytest.mark.timing
def test_wait_for_jobs_ignores_other_queues_and_times_out(driver: MemoryDriver) -> None:
    waiting = wait_in_thread(driver, ["mine"], timeout=0.3)
    next(waiting)
    enqueue(driver, queue="theirs")
    assert next(waiting) >= 0.3


@pytest.mark.timing
def test_wait_for_jobs_returns_at_once_when_a_job_is_waiting(driver: MemoryDriver) -> None:
    enqueue(driver, queue="b")
    begin = time.monotonic()
    driver.wait_for_jobs(["a", "b"], EVENTUALLY)
    assert time.monotonic() - begin < EVENTUALLY


def test_wait_for_jobs_refuses_bad_arguments(driver: MemoryDriver) -> None:
    with pytest.raises(InvalidRequest, match="queue"):
        driver.wait_for_jobs("default", 1.0)
    with pytest.raises(InvalidRequest, match="timeout"):
        driver.wait_for_jobs(["default"], "soon")  # type: ignore[arg-type]


# -- the indexes -------------------------------------------------------------------


def test_lease_order_holds_across_thousands_of_jobs_and_stale_entries(
    driver: MemoryDriver, clock: FakeClock
) -> None:
    rng = random.Random(7)
    start = clock.now()
    requests = [
        EnqueueRequest(
            "task",
            queue=rng.choice(["a", "b"]),
            priority=rng.randint(-2, 2),
            run_at=start - timedelta(seconds=rng.randint(0, 50)),
        )
        for _ in range(3000)
    ]
    jobs = [result.job for result in driver.enqueue(requests)]
    # Leave stale entries behind: cancelled jobs, and jobs that were leased,
    # failed and promoted back with a new run_at (a second, newer heap entry).
    driver.cancel([job.id for job in rng.sample(jobs, 800)])
    bounced = driver.lease(["a", "b"], 300, 30.0, "w")
    clock.advance(1)
    driver.fail([Failure(job.id, job.lease_token or "", BOOM) for job in bounced])
    assert driver.promote().promoted == len(bounced)
    waiting = driver.list_jobs(JobFilter(states=frozenset({JobState.AVAILABLE}), limit=100_000))
    expected = sorted(waiting, key=lease_order_key)

    leased = lease_all(driver, ["a", "b"], batch=37)

    assert [job.id for job in leased] == [job.id for job in expected]


def test_lease_takes_the_best_job_across_queues(driver: MemoryDriver, clock: FakeClock) -> None:
    early = clock.now() - timedelta(seconds=5)
    low_a, high_b, early_b, late_a = (
        enqueue(driver, queue="a", priority=0)[0],
        enqueue(driver, queue="b", priority=3)[0],
        enqueue(driver, queue="b", priority=0, run_at=early)[0],
        enqueue(driver, queue="a", priority=0)[0],
    )
    enqueue(driver, queue="c", priority=9)
    leased = driver.lease(["a", "b"], 10, 30.0, "w")
    assert [job.id for job in leased] == [high_b.id, early_b.id, low_a.id, late_a.id]


class ScanDetector(dict[int, JobRow]):
    """The driver's job table, refusing to be scanned and counting lookups."""

    lookups = 0

    def __getitem__(self, key: int) -> JobRow:
        self.lookups += 1
        return super().__getitem__(key)

    def get(self, key: int, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("the whole job table was scanned")

    def values(self) -> Any:
        raise AssertionError("the whole job table was scanned")

    def items(self) -> Any:
        raise AssertionError("the whole job table was scanned")


def test_hot_paths_touch_only_the_jobs_they_change(driver: MemoryDriver, clock: FakeClock) -> None:
    now = clock.now()
    enqueue(driver, 2000)
    enqueue(driver, 2000, run_at=now + timedelta(seconds=60))
    enqueue(driver, 10, run_at=now + timedelta(seconds=1))
    running = driver.lease(["default"], 500, 5.0, "w")
    driver.cancel([job.id for job in running[:100]])
    refs = [LeaseRef(job.id, job.lease_token or "") for job in running[100:200]]
    driver.heartbeat(refs, 5.0)  # leaves their first lease entries stale
    table = ScanDetector(driver._jobs)
    driver._jobs = table

    clock.advance(1)
    assert len(driver.lease(["default"], 10, 30.0, "w")) == 10
    assert driver.promote().promoted == 10
    clock.advance(5)
    assert len(driver.rescue()) == 500
    assert table.lookups < 2 * (10 + 10 + 500)


def test_prune_keeps_an_unfinished_workflow_and_prunes_it_later(
    driver: MemoryDriver, clock: FakeClock
) -> None:
    record = driver.enqueue_workflow(chord_graph(2))
    for job in lease_all(driver, ["default"]):
        driver.complete([Completion(job.id, job.lease_token or "", 1)])
    (lone,) = enqueue(driver)
    driver.cancel([lone.id])
    clock.advance(10)
    assert driver.prune(clock.now()) == 1  # the lone job; the chord still runs
    assert driver.get_workflow(record.id).state is WorkflowState.RUNNING

    for job in lease_all(driver, ["callbacks"]):
        driver.complete([Completion(job.id, job.lease_token or "", 2)])
    clock.advance(10)
    assert driver.prune(clock.now()) == 3
    assert driver.count() == {}


def test_a_lazy_heap_drops_stale_entries_once_they_outnumber_live_ones() -> None:
    current: dict[int, int] = {}
    heap: LazyHeap[int] = LazyHeap(lambda job_id, seq: current.get(job_id) == seq)
    for job_id in range(1000):
        current[job_id] = 1
        heap.push(job_id, job_id, 1)
    for job_id in range(900):
        del current[job_id]
        heap.forget()
    assert len(heap) == 100
    assert len(heap._entries) <= 2 * 100 + 64
    assert heap.peek() == (900, 900, 1)


# -- payloads and time ------------------------------------------------------------------


def test_stored_payloads_are_not_shared_with_callers(driver: MemoryDriver) -> None:
    payload = [1, {"k": [2]}]
    (job,) = enqueue(driver, args=(payload,), kwargs={"opts": {"x": [3]}})
    payload.append("mutated by the caller")
    job.args[0][1]["k"].append("mutated through a record")
    job.kwargs["opts"]["x"].append(4)
    (stored,) = driver.get([job.id])
    assert stored.args == ([1, {"k": [2]}],)
    assert stored.kwargs == {"opts": {"x": [3]}}


def test_datetimes_come_back_in_utc(driver: MemoryDriver, clock: FakeClock) -> None:
    paris = timezone(timedelta(hours=2))
    run_at = (clock.now() + timedelta(hours=1)).astimezone(paris)
    (job,) = enqueue(driver, run_at=run_at)
    assert job.run_at == run_at and job.run_at.tzinfo is UTC


# -- every SPI method, once ---------------------------------------------------------------


def test_every_spi_method_in_one_pass(driver: MemoryDriver, clock: FakeClock) -> None:
    assert driver.capabilities == Capabilities(
        notifications=True,
        schedules=True,
        flow_control=True,
        failure_callbacks=True,
        workflow_idempotency=True,
        queue_pause=True,
        workers=True,
        partial_chords=True,
        job_metadata=True,
        key_scopes=True,
        finished_counts=True,
    )
    driver.migrate()
    keyed = EnqueueRequest("task", idempotency_key="k")
    first, again = driver.enqueue([keyed, keyed])
    assert first.created and not again.created and again.job.id == first.job.id
    later = enqueue(driver, run_at=clock.now() + timedelta(seconds=30))[0]
    assert later.state is JobState.SCHEDULED

    (leased,) = driver.lease(["default"], 5, 10.0, "w")
    token = leased.lease_token or ""
    assert leased.attempt == 1 and leased.leased_by == "w"
    beat = driver.heartbeat([LeaseRef(leased.id, token)], 20.0)
    assert beat.lost == () and beat.cancel_requested == frozenset()
    assert driver.cancel([leased.id])[0].cancel_requested
    assert driver.heartbeat([LeaseRef(leased.id, token)], 20.0).cancel_requested == {leased.id}
    assert driver.fail([Failure(leased.id, token, BOOM)]) == []
    assert driver.get([leased.id])[0].state is JobState.CANCELLED
    stale = driver.complete([Completion(leased.id, token, None)])
    assert stale == [LeaseLost.stale(leased.id, token, JobState.CANCELLED)]
    assert driver.requeue([leased.id])[0].state is JobState.AVAILABLE

    (again_leased,) = driver.lease(["default"], 5, 10.0, "w")
    again_token = again_leased.lease_token or ""
    snoozed_until = clock.now() + timedelta(seconds=5)
    assert driver.snooze([SnoozeRequest(again_leased.id, again_token, snoozed_until)]) == []
    clock.advance(30)
    promoted = driver.promote()
    assert promoted.promoted == 2 and promoted.next_due is None
    both = driver.lease(["default"], 5, 10.0, "w")
    assert [job.id for job in both] == [leased.id, later.id]  # by run_at: snoozed one first
    clock.advance(10)
    assert driver.rescue() == [leased.id, later.id]

    record = driver.enqueue_workflow(chord_graph(1))
    assert driver.cancel_workflow(record.id).state is WorkflowState.CANCELLED
    assert driver.get_workflow(record.id).state is WorkflowState.CANCELLED
    counts = driver.count()
    assert counts == {
        ("default", JobState.RETRYING): 2,
        ("default", JobState.CANCELLED): 1,
        ("callbacks", JobState.CANCELLED): 1,
    }
    listed = driver.list_jobs(JobFilter(states=frozenset({JobState.CANCELLED})))
    assert [job.workflow_id for job in listed] == [record.id, record.id]
    minute = minute_of(clock.now())
    assert driver.finished_per_minute(minute) == [
        FinishedCount(minute, "callbacks", JobState.CANCELLED, 1),
        FinishedCount(minute, "default", JobState.CANCELLED, 1),
    ]
    clock.advance(1)
    assert driver.prune(clock.now()) == 2
    assert driver.finished_per_minute(minute) == []
    with pytest.raises(JobNotFound):
        driver.get([listed[0].id])
    driver.close()
