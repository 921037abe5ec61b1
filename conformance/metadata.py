"""Rules of what a job carries besides its payload: ``headers`` for propagation."""

from __future__ import annotations

from taskharbor.spec import (
    EnqueueRequest,
    JobFilter,
    StepSpec,
    WorkflowGraph,
)

from .harness import Harbor, HarborFixture

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
