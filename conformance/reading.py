"""Rules of the reading methods ``get``, ``list_jobs`` and ``count``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskharbor.spec import EnqueueRequest, JobFilter, JobNotFound, JobState

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
