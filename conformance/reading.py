"""Rules of the reading methods ``get``, ``list_jobs`` and ``count``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskharbor.spec import (
    EnqueueRequest,
    InvalidRequest,
    JobFilter,
    JobNotFound,
    JobState,
    StepSpec,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowRecord,
    WorkflowState,
)

from .harness import Harbor, HarborFixture

MICROSECOND = timedelta(microseconds=1)


class ReadingRules(HarborFixture):
    def test_get_returns_the_jobs_in_the_order_asked(self, harbor: Harbor) -> None:
        jobs = [harbor.enqueue(f"task-{index}") for index in range(3)]
        wanted = [jobs[2], jobs[0], jobs[1]]
        assert harbor.driver.get([job.id for job in wanted]) == wanted

    def test_get_names_the_first_missing_id(self, harbor: Harbor) -> None:
        job = harbor.enqueue()
        with pytest.raises(JobNotFound) as missing:
            harbor.driver.get([job.id, job.id + 7, job.id + 3])
        assert missing.value.job_id == job.id + 7

    def test_list_jobs_orders_by_id_and_stops_at_limit(self, harbor: Harbor) -> None:
        jobs = [harbor.enqueue(queue=f"q{index % 2}") for index in range(5)]
        assert harbor.driver.list_jobs(JobFilter()) == jobs
        assert harbor.driver.list_jobs(JobFilter(limit=2)) == jobs[:2]

    def test_list_jobs_pages_with_after_id(self, harbor: Harbor) -> None:
        jobs = [harbor.enqueue() for _ in range(5)]
        pages = []
        after = None
        while page := harbor.driver.list_jobs(JobFilter(after_id=after, limit=2)):
            pages.append([job.id for job in page])
            after = page[-1].id
        assert pages == [[jobs[0].id, jobs[1].id], [jobs[2].id, jobs[3].id], [jobs[4].id]]

    def test_list_jobs_newest_first_pages_with_before_id(self, harbor: Harbor) -> None:
        jobs = [harbor.enqueue("send" if index % 2 else "resize") for index in range(5)]
        ids = [job.id for job in jobs]
        pages = []
        before = None
        while page := harbor.driver.list_jobs(
            JobFilter(before_id=before, limit=2, newest_first=True)
        ):
            pages.append([job.id for job in page])
            before = page[-1].id
        assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
        newest_send = JobFilter(task="send", newest_first=True, limit=1)
        assert harbor.driver.list_jobs(newest_send) == [jobs[3]]
        assert harbor.driver.list_jobs(JobFilter(before_id=ids[3])) == jobs[:3]
        between = JobFilter(after_id=ids[0], before_id=ids[4], newest_first=True)
        assert harbor.driver.list_jobs(between) == [jobs[3], jobs[2], jobs[1]]

    def test_list_jobs_matches_every_given_field(self, harbor: Harbor) -> None:
        dead_mail = harbor.job_in(JobState.DEAD, queue="mail")
        mail = harbor.enqueue("send", queue="mail")
        harbor.enqueue("send", queue="other")
        harbor.enqueue("resize", queue="mail")
        workflow = harbor.chain(EnqueueRequest("first"), EnqueueRequest("second"))
        driver = harbor.driver
        assert driver.list_jobs(JobFilter(task="send", queue="mail")) == [mail]
        states = frozenset({JobState.DEAD, JobState.PENDING})
        assert [job.id for job in driver.list_jobs(JobFilter(states=states))] == [
            dead_mail.id,
            workflow.steps[1],
        ]
        in_workflow = driver.list_jobs(JobFilter(workflow_id=workflow.id))
        assert [job.id for job in in_workflow] == list(workflow.steps)
        only_pending = JobFilter(workflow_id=workflow.id, states=frozenset({JobState.PENDING}))
        assert [job.id for job in driver.list_jobs(only_pending)] == [workflow.steps[1]]

    def test_list_jobs_created_since_includes_its_bound(self, harbor: Harbor) -> None:
        first = harbor.enqueue()
        harbor.advance(10)
        middle = harbor.enqueue()
        harbor.advance(10)
        last = harbor.enqueue()
        bound = middle.created_at

        def since(moment: datetime, **fields: Any) -> list[int]:
            return [
                job.id for job in harbor.driver.list_jobs(JobFilter(created_since=moment, **fields))
            ]

        assert since(bound) == [middle.id, last.id]
        assert since(bound - MICROSECOND) == [middle.id, last.id]
        assert since(bound + MICROSECOND) == [last.id]
        assert since(first.created_at) == [first.id, middle.id, last.id]
        assert since(harbor.later(1)) == []
        assert since(bound, after_id=middle.id) == [last.id]
        assert since(bound, limit=1) == [middle.id]

    def test_list_jobs_created_since_compares_created_at_as_an_instant(
        self, harbor: Harbor
    ) -> None:
        """Not ``run_at`` (the older job runs later, the newer one ran earlier), and not
        the text of a timestamp (the bound is given five hours west of UTC)."""
        older = harbor.job_in(JobState.SCHEDULED, queue="q", run_at=harbor.later(86_400))
        harbor.advance(3600)
        newer = harbor.enqueue(queue="q", run_at=harbor.later(-7200))
        assert older.run_at > newer.created_at > older.created_at > newer.run_at
        west = newer.created_at.astimezone(timezone(timedelta(hours=-5)))
        assert harbor.driver.list_jobs(JobFilter(queue="q", created_since=west)) == [newer]

    def test_count_tells_jobs_per_queue_and_state(self, harbor: Harbor) -> None:
        assert dict(harbor.driver.count()) == {}
        harbor.job_in(JobState.DEAD, queue="a")
        harbor.enqueue(queue="a")
        harbor.enqueue(queue="a")
        harbor.enqueue(queue="b", run_at=harbor.later(60))
        assert dict(harbor.driver.count()) == {
            ("a", JobState.AVAILABLE): 2,
            ("a", JobState.DEAD): 1,
            ("b", JobState.SCHEDULED): 1,
        }


class WorkflowListingRules(HarborFixture):
    """``list_workflows``: every given field of the filter matches; ordered by id."""

    def named(self, harbor: Harbor, name: str | None) -> WorkflowRecord:
        steps = (StepSpec(EnqueueRequest("step", queue=f"wf-{name}")),)
        return harbor.driver.enqueue_workflow(WorkflowGraph(steps, result=0, name=name))

    def test_list_workflows_returns_each_as_get_workflow_does(self, harbor: Harbor) -> None:
        nightly = self.named(harbor, "nightly")
        unnamed = harbor.chain(EnqueueRequest("first"), EnqueueRequest("second"))
        done = self.named(harbor, "done")
        harbor.finish(harbor.get(done.steps[0]), result=7)
        listed = harbor.driver.list_workflows(WorkflowFilter())
        assert listed == [harbor.driver.get_workflow(w.id) for w in (nightly, unnamed, done)]
        assert listed[2].state == WorkflowState.SUCCEEDED and listed[2].finished_at is not None
        assert harbor.driver.list_workflows(WorkflowFilter(limit=1)) == listed[:1]

    def test_list_workflows_matches_every_given_field(self, harbor: Harbor) -> None:
        first = self.named(harbor, "nightly")
        other = self.named(harbor, None)
        last = self.named(harbor, "nightly")
        harbor.driver.cancel_workflow(last.id)
        driver = harbor.driver

        def ids(**fields: Any) -> list[int]:
            return [workflow.id for workflow in driver.list_workflows(WorkflowFilter(**fields))]

        assert ids(name="nightly") == [first.id, last.id]
        assert ids(name="weekly") == []
        assert ids(states=frozenset({WorkflowState.CANCELLED})) == [last.id]
        running = frozenset({WorkflowState.RUNNING})
        assert ids(states=running, name="nightly") == [first.id]
        assert ids(after_id=first.id) == [other.id, last.id]
        assert ids(before_id=last.id) == [first.id, other.id]
        assert ids(newest_first=True, limit=2) == [last.id, other.id]
        assert ids(newest_first=True, before_id=other.id) == [first.id]
        assert ids(name="nightly", newest_first=True) == [last.id, first.id]

    def test_list_workflows_refuses_a_job_filter(self, harbor: Harbor) -> None:
        with pytest.raises(InvalidRequest):
            harbor.driver.list_workflows(JobFilter())  # type: ignore[arg-type]
