"""Tags, meta and progress through the engine: task defaults and enqueue options merged,
bad ones refused with the limit named, a store without ``job_metadata`` refusing them,
and a handler's progress reaching the store with the worker's heartbeat."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from test_engine_support import EVENTUALLY, eventually, make_app, running_worker

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import JobState, Progress


def test_task_tags_and_meta_merge_with_an_enqueues_own() -> None:
    app = th.App("memory://")

    @app.task(tags=["billing", "nightly"], meta={"team": "payments", "version": 1})
    def invoice(n: int) -> int:
        return n

    plain = invoice.enqueue(1)
    assert (plain.tags, dict(plain.meta)) == (
        ("billing", "nightly"),
        {"team": "payments", "version": 1},
    )
    job = invoice.options(tags=["urgent", "billing"], meta={"version": 2, "customer": 7}).enqueue(2)
    assert job.tags == ("billing", "nightly", "urgent")
    assert dict(job.meta) == {"team": "payments", "version": 2, "customer": 7}
    assert app.get_job(job.id).tags == job.tags
    assert [j.id for j in app.list_jobs(tag="urgent")] == [job.id]
    assert [j.id for j in app.list_jobs(tag="billing")] == [plain.id, job.id]
    assert app.list_jobs(tag="missing") == []


def test_workflow_steps_carry_their_signatures_tags() -> None:
    app = th.App("memory://")

    @app.task(tags=["etl"])
    def step(x: int) -> int:
        return x

    handle = app.enqueue(th.chain(step.s(1), step.options(tags=["load"], meta={"n": 2}).s()))
    jobs = app.list_jobs(workflow_id=handle.id)
    assert [(j.tags, dict(j.meta)) for j in jobs] == [(("etl",), {}), (("etl", "load"), {"n": 2})]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tags": "urgent"}, "tags must be a list of strings"),
        ({"tags": ["x" * 65]}, "longer than 64 characters"),
        ({"tags": [f"t{i}" for i in range(17)]}, "17 tags, at most 16 allowed"),
        ({"tags": ["a", "a"]}, "a tag is given twice"),
        ({"meta": ["not", "an", "object"]}, "meta must be a JSON object"),
        ({"meta": {"blob": "x" * 5000}}, "at most 4096 allowed"),
        ({"meta": {"when": object()}}, "object is not JSON"),
    ],
)
def test_bad_tags_or_meta_are_refused_naming_the_limit(
    options: dict[str, object], message: str
) -> None:
    app = th.App("memory://")

    @app.task
    def noop() -> None: ...

    with pytest.raises(th.InvalidRequest, match=message) as refused:
        noop.options(**options).enqueue()
    assert "noop" in str(refused.value)
    assert app.list_jobs() == []


def test_merged_tags_past_the_limit_are_refused_naming_the_task() -> None:
    app = th.App("memory://")

    @app.task(tags=[f"t{i}" for i in range(10)])
    def busy() -> None: ...

    with pytest.raises(th.InvalidRequest, match=r"cannot enqueue .*busy.*17 tags, at most 16"):
        busy.options(tags=[f"u{i}" for i in range(7)]).enqueue()


def test_bad_task_labels_are_refused_at_registration() -> None:
    app = th.App("memory://")
    with pytest.raises(th.InvalidRequest, match=r"@app\.task: tags item"):
        app.task(tags=[""])(lambda: None)
    with pytest.raises(th.InvalidRequest, match=r"@app\.task: meta must be a JSON object"):
        app.task(meta=[1])(lambda: None)  # type: ignore[arg-type]


class _Unlabelled(MemoryDriver):
    capabilities = replace(MemoryDriver.capabilities, job_metadata=False)


def test_a_store_without_job_metadata_refuses_tags_rather_than_drop_them() -> None:
    app = th.App(driver=_Unlabelled())

    @app.task
    def noop() -> None: ...

    with pytest.raises(th.InvalidRequest, match="_Unlabelled does not keep them"):
        noop.options(tags=["a"]).enqueue()
    with pytest.raises(th.InvalidRequest, match="lacks the job_metadata capability"):
        app.enqueue(th.chain(noop.si(), noop.options(meta={"a": 1}).si()))
    with pytest.raises(th.InvalidRequest, match="cannot list jobs by tag"):
        app.list_jobs(tag="a")
    assert noop.enqueue().tags == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [(1.5, "from 0 to 1, not 1.5"), (-0.1, "not -0.1"), (True, "not True"), ("half", "not 'half'")],
)
def test_bad_progress_is_refused_in_the_handler(value: object, message: str) -> None:
    context = th.JobContext(1, "t", "default", 1, 3, None)
    with pytest.raises(th.InvalidRequest, match=message):
        context.set_progress(value)  # type: ignore[arg-type]
    with pytest.raises(th.InvalidRequest, match="longer than 256 characters"):
        context.set_progress(0.5, "x" * 257)
    assert context.progress is None


def test_a_handlers_progress_reaches_the_store_with_the_heartbeat(
    driver_factory: DriverFactory,
) -> None:
    app = make_app(driver_factory)
    if not app.driver.capabilities.job_metadata:
        pytest.skip("the store does not keep progress")
    halfway, finish = threading.Event(), threading.Event()

    @app.task
    def import_rows() -> str:
        context = th.current_job()
        context.set_progress(0.1)
        context.set_progress(0.5, "500 of 1000 rows")  # only the latest is sent
        halfway.set()
        assert finish.wait(EVENTUALLY)
        return "done"

    job = import_rows.enqueue()
    with running_worker(app):
        assert halfway.wait(EVENTUALLY)
        eventually(lambda: app.get_job(job).progress is not None, what="progress stored")
        assert app.get_job(job).progress == Progress(0.5, "500 of 1000 rows")
        finish.set()
        done = app.wait(job, timeout=EVENTUALLY)
    assert (done.state, done.progress) == (JobState.SUCCEEDED, Progress(0.5, "500 of 1000 rows"))


def test_the_heartbeat_carries_progress_only_when_it_changed() -> None:
    context = th.JobContext(1, "t", "default", 1, 3, None)
    assert context.unsent_progress() is None
    context.set_progress(0.25)
    sent = context.unsent_progress()
    assert sent == Progress(0.25)
    context.progress_stored(sent)
    assert context.unsent_progress() is None
    context.set_progress(0.25)  # the same value again is news: the store may have lost it
    assert context.unsent_progress() == Progress(0.25)
