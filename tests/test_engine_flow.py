"""Flow control through the engine: declarations, each job's limits, and workers obeying them."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from test_engine_support import burst, eventually, running_worker

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import Capabilities, FlowLimits, InvalidRequest, JobState, OnDead, RateLimit


def memory_app() -> th.App:
    return th.App("memory://")


def test_a_key_argument_makes_each_jobs_key_and_concurrency_is_per_key() -> None:
    app = memory_app()

    @app.task(concurrency=1, global_concurrency=5, concurrency_key="account_id")
    def charge(account_id: int, cents: int) -> None: ...

    job = charge.enqueue(42, cents=100)
    assert app.get_job(job.id).flow == FlowLimits(
        concurrency=5, key="account_id:42", key_concurrency=1
    )
    other = charge.options(concurrency_key="acct:7").enqueue(account_id=1, cents=1)
    assert app.get_job(other.id).flow == FlowLimits(concurrency=5, key="acct:7", key_concurrency=1)


def test_without_a_key_concurrency_is_per_task() -> None:
    app = memory_app()

    @app.task(concurrency=2)
    def report() -> None: ...

    @app.task(concurrency=3, global_concurrency=2)
    def export() -> None: ...

    assert app.get_job(report.enqueue().id).flow == FlowLimits(concurrency=2)
    assert app.get_job(export.enqueue().id).flow == FlowLimits(concurrency=2)


def test_a_key_function_gets_the_calls_arguments() -> None:
    app = memory_app()

    @app.task(concurrency=1, concurrency_key=lambda tenant, **_: f"tenant:{tenant}")
    def sync(tenant: str, full: bool = False) -> None: ...

    flow = app.get_job(sync.enqueue("a", full=True).id).flow
    assert flow is not None and flow.key == "tenant:a"


def test_sequences_and_rate_limits_are_declared_on_the_task() -> None:
    app = memory_app()

    @app.task(concurrency_key="order", sequence="skip", rate_limit="10/s")
    def step(order: str) -> None: ...

    @app.task(concurrency_key="order", sequence=True, rate_limit="100/m", rate_limit_per_key=True)
    def ship(order: str) -> None: ...

    assert app.get_job(step.enqueue("o1").id).flow == FlowLimits(
        key="order:o1", sequence=OnDead.SKIP, rate=RateLimit(10, 1.0)
    )
    assert app.get_job(ship.enqueue("o1").id).flow == FlowLimits(
        key="order:o1", sequence=OnDead.BLOCK, rate=RateLimit(100, 60.0, per_key=True)
    )


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"concurrency": 0}, "concurrency must be between 1"),
        ({"sequence": "sometimes"}, "sequence must be True, False, 'block' or 'skip'"),
        ({"rate_limit": "fast"}, "rate limit 'fast' is not 'N/unit'"),
        ({"rate_limit_per_key": True}, "rate_limit_per_key needs a rate_limit"),
        ({"concurrency_key": ""}, "concurrency_key must be an argument name"),
        ({"concurrency_key": "k", "concurrency": 2, "sequence": True}, "key concurrency must be 1"),
    ],
)
def test_bad_declarations_are_refused_naming_the_task(
    declaration: dict[str, Any], message: str
) -> None:
    app = memory_app()
    with pytest.raises(InvalidRequest, match=f"task limited: .*{message}"):
        app.task(name="limited", **declaration)(lambda k=None: None)


def test_bad_calls_are_refused_before_anything_is_stored() -> None:
    app = memory_app()

    @app.task(concurrency=1, concurrency_key="account_id")
    def charge(account_id: Any = None) -> None: ...

    @app.task(sequence=True, concurrency_key=lambda **_: None)
    def keyless() -> None: ...

    with pytest.raises(InvalidRequest, match="account_id=None must be a str or an int"):
        charge.enqueue()
    with pytest.raises(InvalidRequest, match=r"task .*keyless: a sequence needs a concurrency key"):
        keyless.enqueue()
    with pytest.raises(InvalidRequest, match="concurrency_key must be a non-empty string"):
        charge.options(concurrency_key="")
    assert app.driver.count() == {}


class _NoFlowControl(MemoryDriver):
    capabilities = Capabilities(schedules=True)


def test_a_store_that_would_not_enforce_limits_refuses_them() -> None:
    app = th.App(driver=_NoFlowControl())

    @app.task(concurrency=1)
    def limited() -> None: ...

    @app.task()
    def free() -> None: ...

    with pytest.raises(InvalidRequest, match="_NoFlowControl does not enforce them"):
        limited.enqueue()
    with pytest.raises(InvalidRequest, match="does not enforce them"):
        app.enqueue(th.chain(free.s(), limited.si()))
    free.enqueue()
    assert app.driver.count() == {("default", JobState.AVAILABLE): 1}


@pytest.mark.timing
def test_a_worker_runs_one_job_per_key_at_a_time_in_enqueue_order(
    driver_factory: DriverFactory,
) -> None:
    app = th.App(driver=driver_factory(None))
    if not app.driver.capabilities.flow_control:
        pytest.skip(f"{type(app.driver).__name__} does not declare capability 'flow_control'")
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    order: list[tuple[str, int]] = []
    lock = threading.Lock()

    @app.task(concurrency=1, concurrency_key="account", sequence=True)
    def post(account: str, n: int) -> None:
        with lock:
            running[account] += 1
            most[account] = max(most[account], running[account])
            order.append((account, n))
        threading.Event().wait(0.002)
        with lock:
            running[account] -= 1

    for n in range(6):
        for account in ("a", "b", "c"):
            post.enqueue(account, n)
    burst(app, concurrency=6)
    assert dict(most) == {"a": 1, "b": 1, "c": 1}
    for account in ("a", "b", "c"):
        assert [n for key, n in order if key == account] == list(range(6))


@pytest.mark.timing
def test_a_worker_does_not_spin_on_jobs_held_back() -> None:
    """One job of a key runs (until released); the other waits in available.  The
    worker's free slots lease again only at a freed slot or each poll: a handful of
    leases, where a spinning worker would make thousands."""
    app = memory_app()
    release = threading.Event()
    leases = Counter[str]()
    lease = app.driver.lease

    def counting(*args: Any) -> Any:
        leases["calls"] += 1
        return lease(*args)

    app.driver.lease = counting  # type: ignore[method-assign]

    @app.task(concurrency=1, concurrency_key="key")
    def hold(key: str) -> None:
        release.wait(60)

    first, second = hold.enqueue("k"), hold.enqueue("k")
    polls = 10
    with running_worker(app, concurrency=4, poll_interval=0.05) as worker:
        while app.get_job(first.id).state is not JobState.RUNNING:
            threading.Event().wait(0.01)
        threading.Event().wait(polls * worker.poll_interval)
        seen = leases["calls"]
        release.set()
        eventually(lambda: app.get_job(second.id).state is JobState.SUCCEEDED)
    # at most one lease per poll and per wake-up, with room for a loaded machine
    assert seen <= 4 * polls + 10, seen
