"""Rules of what a job carries besides its payload: ``headers`` for propagation, ``tags``
and ``meta`` for people (:mod:`taskharbor.spec.metadata`)."""

from __future__ import annotations

from typing import Any

from taskharbor.spec import (
    EnqueueRequest,
    JobFilter,
    JobState,
    StepSpec,
    WorkflowGraph,
)
from taskharbor.spec.schedules import Schedule

from .harness import Harbor, HarborFixture, requires

TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
}
"""A W3C trace context, what headers are mostly for."""


class JobMetadataRules(HarborFixture):
    def test_headers_are_stored_at_enqueue_and_returned_by_every_read(self, harbor: Harbor) -> None:
        job = harbor.enqueue(headers=TRACE)
        assert dict(job.headers) == TRACE
        assert dict(harbor.get(job.id).headers) == TRACE
        (listed,) = harbor.driver.list_jobs(JobFilter())
        assert dict(listed.headers) == TRACE
        leased = harbor.lease_job(job)
        assert dict(leased.headers) == TRACE
        harbor.complete(leased, "done")
        assert dict(harbor.get(job.id).headers) == TRACE

    def test_a_job_without_headers_has_an_empty_mapping(self, harbor: Harbor) -> None:
        job = harbor.enqueue()
        assert dict(job.headers) == {}
        assert dict(harbor.get(job.id).headers) == {}

    def test_each_job_of_a_batch_keeps_its_own_headers(self, harbor: Harbor) -> None:
        for key in (None, "batch-key"):  # a batch with keys is stored another way by some
            requests = [
                EnqueueRequest("task", headers={"n": "0"}),
                EnqueueRequest("task", idempotency_key=key),
                EnqueueRequest("task", headers={"n": "2", "other": ""}),
            ]
            results = harbor.driver.enqueue(requests)
            stored = harbor.driver.get([result.job.id for result in results])
            expected = [{"n": "0"}, {}, {"n": "2", "other": ""}]
            assert [dict(result.job.headers) for result in results] == expected
            assert [dict(job.headers) for job in stored] == expected

    def test_headers_are_copied_at_enqueue(self, harbor: Harbor) -> None:
        given = dict(TRACE)
        job = harbor.enqueue(headers=given)
        given["traceparent"] = "changed"
        assert dict(harbor.get(job.id).headers) == TRACE

    def test_workflow_steps_keep_their_own_headers(self, harbor: Harbor) -> None:
        graph = WorkflowGraph(
            (
                StepSpec(EnqueueRequest("first", headers={"step": "0"})),
                StepSpec(EnqueueRequest("second", headers=TRACE), after=(0,), input=0),
                StepSpec(EnqueueRequest("third"), after=(1,)),
            ),
            result=2,
        )
        workflow = harbor.driver.enqueue_workflow(graph)
        steps = harbor.driver.get(list(workflow.steps))
        assert [dict(step.headers) for step in steps] == [{"step": "0"}, TRACE, {}]
        harbor.complete(harbor.lease(["default"])[0], 1)
        (released,) = harbor.lease(["default"])
        assert dict(released.headers) == TRACE


META = {"customer": 42, "source": "<script>alert(1)</script>", "nested": {"ok": [1, 2.5, None]}}
"""A meta object: numbers, markup (meta is shown to people, never trusted) and nesting."""


class TagsAndMetaRules(HarborFixture):
    """``tags`` and ``meta``: given at enqueue, kept for the job's life, ``tag`` selects."""

    @requires("job_metadata")
    def test_tags_and_meta_are_stored_at_enqueue_and_returned_by_every_read(
        self, harbor: Harbor
    ) -> None:
        job = harbor.enqueue(tags=["billing", "urgent"], meta=META)
        assert (job.tags, dict(job.meta)) == (("billing", "urgent"), META)
        for seen in (harbor.get(job.id), *harbor.driver.list_jobs(JobFilter())):
            assert (seen.tags, dict(seen.meta)) == (("billing", "urgent"), META)
        leased = harbor.lease_job(job)
        assert (leased.tags, dict(leased.meta)) == (("billing", "urgent"), META)
        harbor.complete(leased, "done")
        finished = harbor.get(job.id)
        assert (finished.tags, dict(finished.meta)) == (("billing", "urgent"), META)

    def test_a_job_without_tags_or_meta_has_empty_ones(self, harbor: Harbor) -> None:
        job = harbor.enqueue()
        for seen in (job, harbor.get(job.id)):
            assert (seen.tags, dict(seen.meta), seen.progress) == ((), {}, None)

    @requires("job_metadata")
    def test_each_job_of_a_batch_keeps_its_own_tags_and_meta(self, harbor: Harbor) -> None:
        for key in (None, "batch-key"):  # a batch with keys is stored another way by some
            requests = [
                EnqueueRequest("task", tags=("a",), meta={"n": 0}),
                EnqueueRequest("task", idempotency_key=key),
                EnqueueRequest("task", tags=("b", "a"), meta={"n": 2, "s": "\x00"}),
            ]
            results = harbor.driver.enqueue(requests)
            stored = harbor.driver.get([result.job.id for result in results])
            expected = [(("a",), {"n": 0}), ((), {}), (("b", "a"), {"n": 2, "s": "\x00"})]
            assert [(r.job.tags, dict(r.job.meta)) for r in results] == expected
            assert [(job.tags, dict(job.meta)) for job in stored] == expected

    @requires("job_metadata")
    def test_meta_is_copied_at_enqueue(self, harbor: Harbor) -> None:
        given = {"list": [1]}
        job = harbor.enqueue(meta=given)
        given["list"].append(2)
        given["new"] = []
        assert dict(harbor.get(job.id).meta) == {"list": [1]}

    @requires("job_metadata")
    def test_workflow_steps_keep_their_own_tags_and_meta(self, harbor: Harbor) -> None:
        graph = WorkflowGraph(
            (
                StepSpec(EnqueueRequest("first", tags=("etl",), meta={"step": 0})),
                StepSpec(EnqueueRequest("second", tags=("etl", "load")), after=(0,), input=0),
            ),
            result=1,
        )
        workflow = harbor.driver.enqueue_workflow(graph)
        steps = harbor.driver.get(list(workflow.steps))
        assert [(s.tags, dict(s.meta)) for s in steps] == [
            (("etl",), {"step": 0}),
            (("etl", "load"), {}),
        ]
        for where in (JobFilter(tag="load"), JobFilter(tag="load", workflow_id=workflow.id)):
            assert [job.id for job in harbor.driver.list_jobs(where)] == [workflow.steps[1]]

    @requires("job_metadata")
    def test_list_jobs_selects_the_jobs_having_a_tag(self, harbor: Harbor) -> None:
        tagged = [
            harbor.enqueue(tags=tags, queue=queue)
            for tags, queue in [
                (("red",), "one"),
                (("blue", "red"), "two"),
                (("blue",), "one"),
                ((), "one"),
                (("reddish",), "one"),
                (("red", "green"), "one"),
            ]
        ]
        ids = [job.id for job in tagged]

        def listed(**where: Any) -> list[int]:
            return [job.id for job in harbor.driver.list_jobs(JobFilter(**where))]

        assert listed(tag="red") == [ids[0], ids[1], ids[5]]
        assert listed(tag="blue") == [ids[1], ids[2]]
        assert listed(tag="Red") == []  # exact, case-sensitive
        assert listed(tag="red", queue="one") == [ids[0], ids[5]]
        assert listed(tag="red", newest_first=True, limit=2) == [ids[5], ids[1]]
        assert listed(tag="red", after_id=ids[0]) == [ids[1], ids[5]]
        harbor.finish(tagged[0])
        assert listed(tag="red", states=frozenset({JobState.AVAILABLE})) == [ids[1], ids[5]]

    @requires("job_metadata", "schedules")
    def test_a_schedules_jobs_carry_its_requests_tags_and_meta(self, harbor: Harbor) -> None:
        request = EnqueueRequest("beat", tags=("periodic", "ops"), meta={"owner": "ops"})
        (stored,) = harbor.driver.sync_schedules([Schedule("tagged", request, every=60)])
        assert stored.schedule.request.tags == ("periodic", "ops")
        assert dict(stored.schedule.request.meta) == {"owner": "ops"}
        harbor.advance(61)
        made = harbor.driver.enqueue_due_ticks(["tagged"]).jobs
        assert made and all(job.tags == ("periodic", "ops") for job in made)
        for job in harbor.driver.get([job.id for job in made]):
            assert (job.tags, dict(job.meta)) == (("periodic", "ops"), {"owner": "ops"})

    @requires("job_metadata")
    def test_a_pruned_job_is_no_longer_listed_by_its_tags(self, harbor: Harbor) -> None:
        old = harbor.enqueue(tags=("nightly",))
        harbor.finish(old)
        harbor.advance(60)
        assert harbor.driver.prune(harbor.now()) == 1
        new = harbor.enqueue(tags=("nightly",))
        assert [job.id for job in harbor.driver.list_jobs(JobFilter(tag="nightly"))] == [new.id]
