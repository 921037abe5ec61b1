"""The producer and operator API of th.App, on every driver."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from test_engine_support import Producer, burst, fake_app, make_app

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.spec import (
    EnqueueRequest,
    EnqueueResult,
    InvalidRequest,
    InvalidTransition,
    JobNotFound,
    JobState,
    SystemClock,
)
from taskharbor.testing import Harness


def add(a: int, b: int) -> int:
    return a + b


# -- tasks -------------------------------------------------------------------------------


def test_task_names_default_to_module_and_qualname(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    task = app.task(add)
    assert task.name == f"{__name__}.add"
    assert app.get_task(task.name) is task
    assert task(2, 3) == 5  # calling the task runs the function here


def test_an_explicit_name_and_defaults_are_kept(
    driver_factory: DriverFactory, produce: Producer
) -> None:
    app = make_app(driver_factory)

    @app.task(name="mail.send", queue="mail", priority=7, max_attempts=5, timeout=2)
    def send(to: str) -> None: ...

    job = produce(send, "a@example.com")
    assert (job.task, job.queue, job.priority, job.max_attempts) == ("mail.send", "mail", 7, 5)
    assert send.defaults.timeout == 2.0


def test_two_tasks_under_one_name_are_refused(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    app.task(name="x")(add)
    with pytest.raises(InvalidRequest, match="'x' is already registered"):
        app.task(name="x")(lambda: None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 10**6}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"queue": ""}, "queue name"),
        ({"timeout": -1}, "timeout"),
        ({"backoff": "fast"}, "backoff"),
    ],
)
def test_bad_task_defaults_are_refused_at_registration(
    driver_factory: DriverFactory, options: dict[str, Any], message: str
) -> None:
    app = make_app(driver_factory)
    with pytest.raises(InvalidRequest, match=message):
        app.task(**options)(add)
    assert app.tasks == {}


def test_async_handlers_are_recognised(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)

    @app.task
    async def fetch(url: str) -> int:
        return len(url)

    assert fetch.is_async and not app.task(add).is_async


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_stores_an_available_job(driver_factory: DriverFactory, produce: Producer) -> None:
    app, clock = fake_app(driver_factory)
    job = produce(app.task(add), 1, b=2)
    assert job.state == JobState.AVAILABLE
    assert (job.args, dict(job.kwargs), job.attempt) == ((1,), {"b": 2}, 0)
    assert job.run_at == clock.now() and job.created_at == clock.now()
    assert app.get_job(job.id) == job


def test_delay_and_run_at_schedule_the_job(
    driver_factory: DriverFactory, produce: Producer
) -> None:
    app, clock = fake_app(driver_factory)
    task = app.task(add)
    delayed = produce(task.options(delay=10), 1, 2)
    assert delayed.state == JobState.SCHEDULED
    assert delayed.run_at == clock.now() + timedelta(seconds=10)
    later = clock.now() + timedelta(hours=1)
    at = produce(task.options(run_at=later), 1, 2)
    assert (at.state, at.run_at) == (JobState.SCHEDULED, later)
    as_timedelta = produce(task.options(delay=timedelta(minutes=1)), 1, 2)
    assert as_timedelta.run_at == clock.now() + timedelta(minutes=1)


def test_options_override_defaults_and_combine(
    driver_factory: DriverFactory, produce: Producer
) -> None:
    app = make_app(driver_factory)
    task = app.task(queue="a", priority=1)(add)
    job = produce(task.options(queue="b").options(priority=5, max_attempts=9), 1, 2)
    assert (job.queue, job.priority, job.max_attempts) == ("b", 5, 9)
    assert produce(task.options(priority=None), 1, 2).priority == 1  # None: the default


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": -1}, "delay must be >= 0 and finite"),
        ({"delay": float("nan")}, "delay must be >= 0 and finite"),
        ({"delay": "soon"}, "delay must be seconds"),
        ({"delay": 1e12}, "delay of 1000000000000.0 s is too long"),
        ({"delay": timedelta.max}, "delay of .* s is too long"),
        ({"run_at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"run_at": datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))}, "out of range"),
        ({"run_at": datetime.max.replace(tzinfo=UTC)}, "run_at 9999-12-31T23:59:59.999999"),
        ({"delay": 1, "run_at": datetime(2030, 1, 1).astimezone()}, "not both"),
        ({"retries": 3}, "unknown enqueue option"),
        ({"priority": "high"}, "priority must be an int"),
    ],
)
def test_bad_options_are_refused_with_a_clear_error(
    driver_factory: DriverFactory, options: dict[str, Any], message: str, produce: Producer
) -> None:
    app = make_app(driver_factory)
    task = app.task(add)
    with pytest.raises(InvalidRequest, match=message):
        produce(task.options(**options), 1, 2)
    assert app.list_jobs() == []


@pytest.mark.parametrize(
    "payload",
    [
        ((object(),), {}),
        (((1, 2),), {}),  # tuples would come back as lists: refused
        ((), {"when": b"2030-01-01"}),  # a datetime is encoded (typed payloads); bytes are not
        ((float("inf"),), {}),
        ((), {"x": {1: "non-str key"}}),
    ],
)
def test_non_json_payloads_are_refused_and_nothing_is_written(
    driver_factory: DriverFactory,
    payload: tuple[tuple[Any, ...], dict[str, Any]],
    produce: Producer,
) -> None:
    app = make_app(driver_factory)
    task = app.task(name="t")(lambda *a, **k: None)
    args, kwargs = payload
    with pytest.raises(InvalidRequest, match="cannot enqueue t"):
        produce(task, *args, **kwargs)
    assert app.list_jobs() == []


def test_idempotency_key_returns_the_first_job(
    driver_factory: DriverFactory, produce: Producer
) -> None:
    app = make_app(driver_factory)
    task = app.task(add)
    first = produce(task.options(idempotency_key="order-1"), 1, 2)
    again = produce(task.options(idempotency_key="order-1"), 5, 5)
    assert again.id == first.id and again.args == (1, 2)
    assert len(app.list_jobs()) == 1


@pytest.mark.timing
def test_enqueue_async_does_not_block_the_loop(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    task = app.task(add)

    async def main() -> list[th.Job]:
        return list(await asyncio.gather(*(task.enqueue_async(i, i) for i in range(5))))

    jobs = asyncio.run(main())
    assert sorted(job.args for job in jobs) == [(i,) * 2 for i in range(5)]


class CountingEnqueue:
    """Stands in for a driver's enqueue method and counts its calls."""

    def __init__(self, enqueue: Callable[[list[EnqueueRequest]], list[EnqueueResult]]) -> None:
        self.enqueue = enqueue
        self.calls = 0

    def __call__(self, requests: list[EnqueueRequest]) -> list[EnqueueResult]:
        self.calls += 1
        return self.enqueue(requests)


def test_enqueue_many_is_one_driver_call_and_all_or_nothing(
    driver_factory: DriverFactory,
) -> None:
    app = make_app(driver_factory)
    task = app.task(add)
    counting = CountingEnqueue(app.driver.enqueue)
    app.driver.enqueue = counting  # type: ignore[method-assign]
    jobs = app.enqueue_many(task.s(i, i) for i in range(50))
    assert counting.calls == 1 and [job.args for job in jobs] == [(i, i) for i in range(50)]
    with pytest.raises(InvalidRequest):
        app.enqueue_many([task.s(1, 1), task.s(object(), 1)])
    assert len(app.list_jobs(limit=1000)) == 50


def test_signatures_use_task_defaults_and_their_options(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    task = app.task(queue="q", max_attempts=4)(add)
    job = app.enqueue(task.s(1, 2).options(priority=3))
    assert (job.queue, job.priority, job.max_attempts, job.args) == ("q", 3, 4, (1, 2))
    with_opts = app.enqueue(task.options(queue="other").s(1, 2))
    assert with_opts.queue == "other"
    with pytest.raises(InvalidRequest, match="unknown enqueue option"):
        app.request_for(task.s(1, 2).options(colour="red"))
    with pytest.raises(InvalidRequest, match="no task named 'nope'"):
        app.enqueue(th.Signature("nope"))
    with pytest.raises(InvalidRequest, match="takes a signature"):
        app.enqueue("add")  # type: ignore[call-overload]


# -- reading and operating -------------------------------------------------------------


def test_list_jobs_filters_and_stats_count(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    a = app.task(name="a", queue="q1")(add)
    b = app.task(name="b", queue="q2")(add)
    a_jobs = [a.enqueue(i, i) for i in range(3)]
    b.enqueue(0, 0)
    app.cancel(a_jobs[0])
    assert [job.id for job in app.list_jobs(task=a)] == [job.id for job in a_jobs]
    assert [job.id for job in app.list_jobs(state="cancelled")] == [a_jobs[0].id]
    assert len(app.list_jobs(state=["available", JobState.CANCELLED])) == 4
    assert len(app.list_jobs(queue="q2")) == 1
    assert [j.id for j in app.list_jobs(limit=2, after_id=a_jobs[0].id)] == [
        j.id for j in a_jobs[1:]
    ]
    since_b = app.get_job(a_jobs[2].id).created_at
    created_late = [j.id for j in app.list_jobs(created_since=since_b)]
    assert created_late[0] == a_jobs[2].id and all(j >= a_jobs[2].id for j in created_late)
    with pytest.raises(InvalidRequest, match="unknown job state"):
        app.list_jobs(state="done")
    stats = app.stats()
    assert stats["q1"][JobState.AVAILABLE] == 2 and stats["q1"][JobState.CANCELLED] == 1
    assert stats["q2"][JobState.AVAILABLE] == 1 and stats["q2"][JobState.DEAD] == 0


def test_cancel_a_queued_job_at_once(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    job = app.task(add).options(delay=60).enqueue(1, 2)
    cancelled = app.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED and cancelled.finished
    with pytest.raises(InvalidTransition):
        app.cancel(job.id)


def test_requeue_moves_a_dead_job_back_with_attempts_reset(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)

    @app.task(max_attempts=1)
    def broken() -> None:
        raise th.PermanentError("no")

    job = broken.enqueue()
    burst(app)
    dead = app.get_job(job)
    assert dead.state == JobState.DEAD and dead.attempt == 1
    back = app.requeue(job)
    assert back.state == JobState.AVAILABLE and back.attempt == 0
    assert len(back.errors) == 1  # history is kept
    with pytest.raises(InvalidTransition):
        app.requeue(job)


@pytest.mark.timing
def test_wait_returns_a_finished_job_or_times_out(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    task = app.task(add)
    job = task.enqueue(1, 2)
    with pytest.raises(TimeoutError, match="still available"):
        app.wait(job, timeout=0.05)
    burst(app)
    assert app.wait(job, timeout=1).result == 3
    assert asyncio.run(app.wait_async(job.id, timeout=1)).result == 3


def test_unknown_job_ids_raise_job_not_found(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    with pytest.raises(JobNotFound):
        app.get_job(12345)


def test_prune_deletes_old_finished_jobs(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)
    task = app.task(add)
    job = task.enqueue(1, 2)
    burst(app)
    clock.advance(100)
    assert app.prune(older_than=200) == 0
    assert app.prune(older_than=timedelta(seconds=50)) == 1
    with pytest.raises(JobNotFound):
        app.get_job(job)
    with pytest.raises(InvalidRequest):
        app.prune(older_than=-1)


# -- storage URLs ------------------------------------------------------------------------


def test_urls_open_their_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from taskharbor.drivers.memory import MemoryDriver
    from taskharbor.drivers.sqlite import SQLiteDriver

    assert isinstance(th.App("memory://").driver, MemoryDriver)
    with th.App(f"sqlite:///{tmp_path / 'jobs.db'}") as app:
        assert isinstance(app.driver, SQLiteDriver)
        assert app.task(add).enqueue(1, 2).id == 1
    monkeypatch.chdir(tmp_path)
    with th.App() as default:
        assert isinstance(default.driver, SQLiteDriver)
    assert (tmp_path / "taskharbor.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mongodb://localhost", "unknown storage URL scheme 'mongodb'"),
        ("jobs.db", "unknown storage URL scheme '\\(none\\)'"),
        ("sqlite://", "has no file path"),
        ("", "non-empty string"),
    ],
)
def test_bad_urls_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        th.App(url)


def test_unknown_scheme_error_does_not_show_the_password() -> None:
    with pytest.raises(InvalidRequest) as caught:
        th.App("mysql://user:secret@host/db")
    assert "secret" not in str(caught.value)


def test_app_takes_a_driver_or_a_url_not_both(driver_factory: DriverFactory) -> None:
    driver = driver_factory(SystemClock())
    assert th.App(driver).driver is driver
    with pytest.raises(InvalidRequest, match="not both"):
        th.App("memory://", driver=driver)


@pytest.mark.parametrize(
    "options",
    [
        {"retry_on": "ValueError"},
        {"retry_on": (ValueError, 3)},
        {"no_retry_on": ValueError()},
        {"no_retry_on": (KeyboardInterrupt,)},
        {"retry_on": True},
    ],
)
def test_a_retry_policy_that_is_not_exception_types_is_refused(options: dict[str, Any]) -> None:
    app = th.App("memory://")
    with pytest.raises(InvalidRequest, match=r"(no_)?retry_on must be an exception class"):
        app.task(name="policy", **options)(lambda: None)
    assert "policy" not in app.tasks


# -- arguments are checked against the handler -----------------------------------------


def test_enqueue_refuses_arguments_the_handler_cannot_take(driver_factory: DriverFactory) -> None:
    """A call that could only fail with TypeError on every attempt is never stored."""
    app = make_app(driver_factory)
    task = app.task(name="add")(add)

    async def enqueue_async() -> None:
        await task.enqueue_async(1, 2, c=3)

    refused: list[tuple[str, Callable[[], object]]] = [
        ("unexpected keyword argument 'c'", lambda: task.enqueue(1, 2, c=3)),
        ("missing a required argument: 'b'", lambda: task.enqueue(1)),
        ("too many positional arguments", lambda: task.enqueue(1, 2, 3)),
        ("multiple values for argument 'a'", lambda: task.options(priority=1).enqueue(1, a=2)),
        ("unexpected keyword argument 'c'", lambda: asyncio.run(enqueue_async())),
        ("missing a required argument: 'b'", lambda: app.enqueue(th.Signature("add", (1,)))),
        ("missing a required argument: 'b'", lambda: app.enqueue_many([task.s(1, 2), task.s(1)])),
        ("too many positional arguments", lambda: task.si(1, 2, 3)),
        ("missing a required argument: 'b'", lambda: task.options(queue="q").si(1)),
        ("unexpected keyword argument 'c'", lambda: task.s(c=1)),
        ("too many positional arguments", lambda: task.options(queue="q").s(1, 2, 3)),
    ]
    for problem, call in refused:
        with pytest.raises(InvalidRequest) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("cannot enqueue add(") and problem in message, message
        assert message.endswith("(the handler takes (a, b))")
    assert app.list_jobs() == []
    assert task.enqueue(1, b=2).args == (1,)


def test_workflow_steps_bind_with_the_parents_result_in_front(
    driver_factory: DriverFactory,
) -> None:
    """A chained step or a chord callback gets one argument more when it runs; .si() none."""
    app = make_app(driver_factory)
    task = app.task(name="add")(add)
    total = app.task(name="total")(lambda values: sum(values))

    handle = app.enqueue(th.chain(task.s(1, 2), task.s(10), task.si(5, 5)))
    chord = app.enqueue(th.chord([task.s(1, 1), task.s(2, 2)], total.s()))
    burst(app)
    assert (handle.result(), chord.result()) == (10, 6)

    refused = [
        ("too many positional arguments", th.chain(task.s(1, 2), task.s(10, 20))),
        ("missing a required argument: 'b'", th.chain(task.s(1))),
        ("multiple values for argument 'a'", th.chain(task.s(1, 2), task.s(a=1))),
        ("too many positional arguments", th.chord([task.s(1, 1)], total.s([1]))),
    ]
    before = len(app.list_jobs(limit=1000))
    for problem, workflow in refused:
        with pytest.raises(InvalidRequest, match=problem):
            app.enqueue(workflow)
    with pytest.raises(InvalidRequest, match=r"add\(10, 20\) after the previous step's result"):
        app.enqueue(th.chain(task.s(1, 2), task.s(10, 20)))
    assert len(app.list_jobs(limit=1000)) == before


def test_handlers_without_a_signature_are_not_checked() -> None:
    app = th.App("memory://")
    task = app.task(name="builtin_len")(len)  # a builtin: inspect finds its signature
    with pytest.raises(InvalidRequest, match="too many positional arguments"):
        task.enqueue([1], [2])
    largest = app.task(name="max")(max)  # max has no signature to inspect: stored as given
    assert largest.enqueue(1, 2, 3, colour="red").args == (1, 2, 3)


# -- the store is opened on first use ---------------------------------------------------

TASKS_MODULE = """
import taskharbor as th

app = th.App({url!r})


@app.task(max_attempts=5, queue="mail")
def send(to: str) -> str:
    return to


@app.task()
def collect(values: list) -> int:
    return len(values)


nightly = th.chord([send.s("a"), send.s("b")], collect.s())
"""


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_importing_a_tasks_module_needs_no_database(tmp_path: Path) -> None:
    """th.App(url) opens (and migrates) its store on first use, not at construction."""
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/jobs"
    module = tmp_path / "unreachable_tasks.py"
    module.write_text(TASKS_MODULE.format(url=url))
    spec = importlib.util.spec_from_file_location("unreachable_tasks", module)
    assert spec is not None and spec.loader is not None
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)  # tasks, signatures, a workflow: no connection needed
    app: th.App = tasks.app
    assert "not opened yet" in repr(app)
    with Harness(app) as harness:  # the testing kit does not open the real store either
        tasks.send.enqueue("ada@example.com")
        assert [job.result for job in harness.drain()] == ["ada@example.com"]
    with pytest.raises(th.StoreError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1"):
        tasks.send.enqueue("ada@example.com")  # the first use opens it, and says why not
    app.close()


def test_a_sqlite_store_is_created_and_migrated_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "lazy.db"
    app = th.App(f"sqlite:///{path}")
    task = app.task(name="work")(lambda: None)
    signature = task.s()
    assert not path.exists()
    app.close()  # closing an app that never opened its store is fine
    job = app.enqueue(signature)
    assert path.exists() and app.get_job(job).state == JobState.AVAILABLE
    app.close()


@pytest.mark.parametrize("url", ["nosuchstore://x", "sqlite://", "nonsense"])
def test_a_bad_url_is_still_refused_at_construction(url: str) -> None:
    with pytest.raises(InvalidRequest):
        th.App(url)
