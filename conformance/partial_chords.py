"""Rules of partial steps (capability ``partial_chords``): a chord's callback run over
the members that succeeded.

A partial step waits until every step it depends on has ended, however it ended,
and is released once with :func:`~taskharbor.spec.records.partial_input` in front
of its args; its tolerated steps do not fail or cancel the workflow.  See
"Partial steps" in ``spec/spi.py``.
"""

from __future__ import annotations

import threading
from typing import Any

from taskharbor.spec import (
    WORKFLOW_SUCCEEDED,
    EnqueueRequest,
    Failure,
    JobRecord,
    JobState,
    StepSpec,
    WorkflowGraph,
    WorkflowRecord,
    WorkflowState,
    dependency_reason,
    member_failure,
    step_failure,
)

from .harness import BOOM, Harbor, HarborFixture, requires
from .workflows import step


def partial_chord(
    harbor: Harbor, members: int = 3, *, on_failure: EnqueueRequest | None = None
) -> WorkflowRecord:
    """``members`` jobs and a partial callback taking their results, with one own arg."""
    callback = StepSpec(
        EnqueueRequest("callback", queue="callback", args=("extra",)),
        after=tuple(range(members)),
        input=list(range(members)),
        partial=True,
    )
    steps = (*(step(f"m{index}") for index in range(members)), callback)
    graph = WorkflowGraph(steps, result=members, on_failure=on_failure)
    return harbor.driver.enqueue_workflow(graph)


def kill(harbor: Harbor, job: JobRecord) -> JobRecord:
    """Lease ``job`` and fail it permanently; returns it as stored (dead)."""
    harbor.fail(harbor.lease_job(job), permanent=True)
    return harbor.get(job.id)


def workflow_state(harbor: Harbor, record: WorkflowRecord) -> WorkflowState:
    return harbor.driver.get_workflow(record.id).state


class PartialChordRules(HarborFixture):
    @requires("partial_chords")
    def test_the_callback_waits_while_a_member_is_unfinished(self, harbor: Harbor) -> None:
        record = partial_chord(harbor)
        m0, m1, _, callback = harbor.driver.get(list(record.steps))
        kill(harbor, m0)
        harbor.finish(m1, "one")
        assert harbor.get(callback.id).state is JobState.PENDING
        assert workflow_state(harbor, record) is WorkflowState.RUNNING

    @requires("partial_chords")
    def test_the_last_member_dying_releases_the_callback_with_the_successes(
        self, harbor: Harbor
    ) -> None:
        record = partial_chord(harbor)
        m0, m1, m2, callback = harbor.driver.get(list(record.steps))
        harbor.finish(m1, "one")
        harbor.finish(m0, "zero")
        died_at = harbor.advance(3)
        dead = kill(harbor, m2)
        released = harbor.get(callback.id)
        assert (released.state, released.run_at) == (JobState.AVAILABLE, died_at)
        assert released.args == (["zero", "one"], [member_failure(2, dead)], "extra")
        assert released.args[1][0] == {
            "index": 2,
            "job_id": m2.id,
            "task": "m2",
            "state": "dead",
            "attempt": 1,
            "type": BOOM.type,
            "message": BOOM.message,
            "reason": None,
        }
        assert workflow_state(harbor, record) is WorkflowState.RUNNING

    @requires("partial_chords")
    def test_results_keep_member_order_whatever_order_members_end_in(self, harbor: Harbor) -> None:
        record = partial_chord(harbor, 4)
        m0, m1, m2, m3, callback = harbor.driver.get(list(record.steps))
        harbor.finish(m3, 3)
        dead = kill(harbor, m1)
        harbor.finish(m2, 2)
        harbor.finish(m0, 0)
        assert harbor.get(callback.id).args == ([0, 2, 3], [member_failure(1, dead)], "extra")

    @requires("partial_chords")
    def test_when_every_member_succeeds_the_callback_hears_of_no_failure(
        self, harbor: Harbor
    ) -> None:
        record = partial_chord(harbor, 2)
        m0, m1, callback = harbor.driver.get(list(record.steps))
        harbor.finish(m1, "b")
        harbor.finish(m0, "a")
        assert harbor.get(callback.id).args == (["a", "b"], [], "extra")

    @requires("partial_chords")
    def test_a_cancelled_member_is_a_failure_not_a_cancelled_workflow(self, harbor: Harbor) -> None:
        record = partial_chord(harbor, 2)
        m0, m1, callback = harbor.driver.get(list(record.steps))
        harbor.finish(m0, "a")
        (cancelled,) = harbor.driver.cancel([m1.id])
        assert harbor.get(callback.id).args == (["a"], [member_failure(1, cancelled)], "extra")
        assert harbor.get(callback.id).args[1][0]["state"] == "cancelled"
        assert workflow_state(harbor, record) is WorkflowState.RUNNING

    @requires("partial_chords")
    def test_every_member_dead_gives_an_empty_list(self, harbor: Harbor) -> None:
        record = partial_chord(harbor, 2)
        m0, m1, callback = harbor.driver.get(list(record.steps))
        dead = [kill(harbor, m0), kill(harbor, m1)]
        released = harbor.get(callback.id)
        assert released.args == (
            [],
            [member_failure(i, job) for i, job in enumerate(dead)],
            "extra",
        )

    @requires("partial_chords")
    def test_cancelling_the_last_member_and_the_callback_together_releases_nothing(
        self, harbor: Harbor
    ) -> None:
        record = partial_chord(harbor, 2)
        m0, m1, callback = harbor.driver.get(list(record.steps))
        harbor.finish(m0, "a")
        run_at = harbor.get(callback.id).run_at
        harbor.advance(5)
        harbor.driver.cancel([m1.id, callback.id])
        cancelled = harbor.get(callback.id)
        assert (cancelled.state, cancelled.args, cancelled.run_at) == (
            JobState.CANCELLED,
            ("extra",),
            run_at,
        )

    @requires("partial_chords")
    def test_a_workflow_whose_callback_succeeds_succeeds(self, harbor: Harbor) -> None:
        record = partial_chord(harbor, 2)
        m0, m1, callback = harbor.driver.get(list(record.steps))
        kill(harbor, m0)
        harbor.finish(m1, "b")
        harbor.finish(harbor.get(callback.id), "total")
        stored = harbor.driver.get_workflow(record.id)
        assert (stored.state, stored.finished_at) == (WorkflowState.SUCCEEDED, harbor.now())

    @requires("partial_chords")
    def test_a_dead_callback_fails_the_workflow(self, harbor: Harbor) -> None:
        record = partial_chord(harbor, 1)
        m0, callback = harbor.driver.get(list(record.steps))
        harbor.finish(m0, "a")
        kill(harbor, harbor.get(callback.id))
        assert workflow_state(harbor, record) is WorkflowState.FAILED

    @requires("partial_chords", "failure_callbacks")
    def test_a_tolerated_death_calls_no_failure_callback(self, harbor: Harbor) -> None:
        alert = EnqueueRequest("alert", queue="alert")
        record = partial_chord(harbor, 2, on_failure=alert)
        m0, m1, callback = harbor.driver.get(list(record.steps))
        kill(harbor, m0)
        harbor.finish(m1, "b")
        harbor.finish(harbor.get(callback.id))
        assert record.on_failure is not None
        on_failure = harbor.get(record.on_failure)
        assert (on_failure.state, on_failure.reason) == (JobState.CANCELLED, WORKFLOW_SUCCEEDED)

    @requires("partial_chords", "failure_callbacks")
    def test_a_failure_callback_hears_of_the_dead_callback_not_the_member(
        self, harbor: Harbor
    ) -> None:
        alert = EnqueueRequest("alert", queue="alert")
        record = partial_chord(harbor, 1, on_failure=alert)
        m0, callback = harbor.driver.get(list(record.steps))
        kill(harbor, m0)
        dead_callback = kill(harbor, harbor.get(callback.id))
        assert record.on_failure is not None
        on_failure = harbor.get(record.on_failure)
        assert on_failure.state is JobState.AVAILABLE
        assert on_failure.args[0]["job_id"] == dead_callback.id

    @requires("partial_chords", "failure_callbacks")
    def test_a_failure_callback_hears_of_the_first_counted_death_of_a_call(
        self, harbor: Harbor
    ) -> None:
        partial = StepSpec(EnqueueRequest("callback", queue="callback"), after=(0,), partial=True)
        alert = EnqueueRequest("alert", queue="alert")
        graph = WorkflowGraph((step("m"), partial, step("x")), result=1, on_failure=alert)
        record = harbor.driver.enqueue_workflow(graph)
        member, other = (harbor.lease_job(job) for job in harbor.driver.get([*record.steps[::2]]))
        failures = [
            Failure(job.id, job.lease_token or "", BOOM, permanent=True) for job in (member, other)
        ]
        assert harbor.driver.fail(failures) == []
        assert record.on_failure is not None
        on_failure = harbor.get(record.on_failure)
        assert on_failure.args[0] == step_failure(record.id, harbor.get(other.id))

    @requires("partial_chords")
    def test_a_chain_member_that_breaks_is_one_cancelled_failure(self, harbor: Harbor) -> None:
        partial = StepSpec(
            EnqueueRequest("callback", queue="callback"), after=(1, 2), input=[1, 2], partial=True
        )
        graph = WorkflowGraph(
            (step("a"), step("b", after=(0,), input=0), step("c"), partial), result=3
        )
        record = harbor.driver.enqueue_workflow(graph)
        a, b, c, callback = harbor.driver.get(list(record.steps))
        harbor.finish(c, "C")
        dead = kill(harbor, a)
        tail = harbor.get(b.id)
        assert (tail.state, tail.reason) == (JobState.CANCELLED, dependency_reason(a.id, "dead"))
        assert harbor.get(callback.id).args == (["C"], [member_failure(0, tail)])
        assert dead.state is JobState.DEAD
        harbor.finish(harbor.get(callback.id))
        assert workflow_state(harbor, record) is WorkflowState.SUCCEEDED

    @requires("partial_chords")
    def test_a_nested_chord_keeps_its_place_and_a_step_after_waits(self, harbor: Harbor) -> None:
        inner = StepSpec(
            EnqueueRequest("inner", queue="inner"), after=(0, 1), input=[0, 1], partial=True
        )
        outer = StepSpec(
            EnqueueRequest("outer", queue="outer"), after=(2, 3, 4), input=[2, [3, 4]], partial=True
        )
        steps = (step("a"), step("b"), inner, step("c"), step("d"), outer, step("e", after=(5,)))
        record = harbor.driver.enqueue_workflow(WorkflowGraph(steps, result=6))
        a, b, inner_job, c, d, outer_job, e = harbor.driver.get(list(record.steps))
        kill(harbor, a)
        harbor.finish(b, "B")
        assert harbor.get(inner_job.id).args[0] == ["B"]
        harbor.finish(harbor.get(inner_job.id), "I")
        dead_d = kill(harbor, d)
        assert harbor.get(outer_job.id).state is JobState.PENDING
        harbor.finish(c, "C")
        assert harbor.get(outer_job.id).args == (["I", ["C"]], [member_failure(2, dead_d)])
        assert harbor.get(e.id).state is JobState.PENDING
        kill(harbor, harbor.get(outer_job.id))
        assert harbor.get(e.id).state is JobState.CANCELLED
        assert workflow_state(harbor, record) is WorkflowState.FAILED

    @requires("partial_chords")
    def test_a_partial_step_without_input_gets_nothing_in_front(self, harbor: Harbor) -> None:
        partial = StepSpec(
            EnqueueRequest("callback", queue="callback", args=(7,)), after=(0,), partial=True
        )
        record = harbor.driver.enqueue_workflow(WorkflowGraph((step("a"), partial), result=1))
        a, callback = harbor.driver.get(list(record.steps))
        kill(harbor, a)
        assert harbor.get(callback.id).args == (7,)

    @requires("partial_chords")
    def test_a_member_requeued_before_the_callback_runs_is_waited_for_again(
        self, harbor: Harbor
    ) -> None:
        record = partial_chord(harbor, 2)
        m0, m1, callback = harbor.driver.get(list(record.steps))
        kill(harbor, m0)
        harbor.driver.requeue([m0.id])
        harbor.finish(m1, "b")
        assert harbor.get(callback.id).state is JobState.PENDING
        harbor.finish(harbor.get(m0.id), "a")
        assert harbor.get(callback.id).args == (["a", "b"], [], "extra")

    @requires("partial_chords")
    def test_a_requeued_callback_waits_for_the_members_requeued_with_it(
        self, harbor: Harbor
    ) -> None:
        """Requeue brings back a workflow's cancelled steps with its items, a step after
        those it depends on, whichever of them the call names: the callback named alone
        waits for its members, rather than run over their cancellations."""
        for named in ("callback", "dead member and callback"):
            record = partial_chord(harbor, 2)
            m0, m1, callback = harbor.driver.get(list(record.steps))
            if named == "callback":
                harbor.driver.cancel(list(record.steps))
                items = [callback.id]
            else:
                kill(harbor, m0)
                harbor.driver.cancel([m1.id, callback.id])
                items = [callback.id, m0.id]
            harbor.driver.requeue(items)
            assert harbor.get(callback.id).state is JobState.PENDING, named
            harbor.finish(harbor.get(m0.id), "a")
            harbor.finish(harbor.get(m1.id), "b")
            assert harbor.get(callback.id).args == (["a", "b"], [], "extra"), named

    @requires("partial_chords")
    def test_a_member_requeued_after_the_workflow_succeeded_runs_alone(
        self, harbor: Harbor
    ) -> None:
        partial = StepSpec(
            EnqueueRequest("callback", queue="callback"), after=(1,), input=[1], partial=True
        )
        graph = WorkflowGraph((step("a"), step("b", after=(0,), input=0), partial), result=2)
        record = harbor.driver.enqueue_workflow(graph)
        a, b, callback = harbor.driver.get(list(record.steps))
        kill(harbor, a)
        harbor.finish(harbor.get(callback.id))
        finished = harbor.driver.get_workflow(record.id)
        (requeued,) = harbor.driver.requeue([a.id])
        assert requeued.state is JobState.AVAILABLE
        assert harbor.get(b.id).state is JobState.CANCELLED
        assert harbor.driver.get_workflow(record.id) == finished
        harbor.finish(harbor.get(a.id))
        assert harbor.driver.get_workflow(record.id) == finished
        assert harbor.get(b.id).state is JobState.CANCELLED

    @requires("partial_chords")
    def test_the_callback_is_released_once_when_the_last_members_end_at_once(
        self, harbor: Harbor
    ) -> None:
        members = 8
        record = partial_chord(harbor, members)
        leased = [harbor.lease_job(job) for job in harbor.driver.get(list(record.steps[:-1]))]
        start = threading.Barrier(members)

        def end(job: JobRecord, index: int) -> None:
            start.wait()
            if index % 2:
                harbor.fail(job, permanent=True)
            else:
                harbor.complete(job, index)

        threads = [
            threading.Thread(target=end, args=(job, index)) for index, job in enumerate(leased)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        callback = harbor.get(record.steps[-1])
        assert callback.state is JobState.AVAILABLE
        dead = harbor.driver.get([job.id for job in leased[1::2]])
        expected: Any = list(range(0, members, 2))
        failures = [
            member_failure(index, job)
            for index, job in zip(range(1, members, 2), dead, strict=True)
        ]
        assert callback.args == (expected, failures, "extra")
