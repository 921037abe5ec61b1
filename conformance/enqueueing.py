"""Rules of ``Driver.enqueue``: stored fields, when a job is due, idempotency keys."""

from __future__ import annotations

from datetime import timedelta, timezone

from taskharbor.spec import (
    DEFAULT_RETRY,
    EnqueueRequest,
    ErrorReport,
    Failure,
    JobState,
    RetryPolicy,
)

from .harness import Harbor, HarborFixture

NUL_TEXT = "a\x00b\x00"
"""A JSON string holding NUL characters: valid JSON (``"a\\u0000b\\u0000"``), kept exactly."""


class EnqueueingRules(HarborFixture):
    def test_enqueue_stores_every_field_of_the_request(self, harbor: Harbor) -> None:
        job = harbor.enqueue(
            "send",
            args=(1, "two", [3.5, None], {"k": True}),
            kwargs={"to": "a@example.com", "n": [1, 2]},
            queue="mail",
            priority=7,
            max_attempts=5,
            idempotency_key="send-1",
            retry=RetryPolicy("linear", base=2.5, cap=60, jitter=False),
        )
        assert (job.task, job.queue, job.priority, job.max_attempts) == ("send", "mail", 7, 5)
        assert job.retry == RetryPolicy("linear", base=2.5, cap=60, factor=2, jitter=False)
        assert harbor.get(job.id).retry == job.retry
        assert job.args == (1, "two", [3.5, None], {"k": True})
        assert dict(job.kwargs) == {"to": "a@example.com", "n": [1, 2]}
        assert job.idempotency_key == "send-1"

    def test_a_new_job_starts_with_no_attempt_lease_result_or_error(self, harbor: Harbor) -> None:
        job = harbor.enqueue()
        assert job.retry == DEFAULT_RETRY
        assert job.id > 0
        assert job.attempt == 0
        assert job.created_at == harbor.now()
        assert (job.lease_token, job.lease_expires_at, job.leased_by) == (None, None, None)
        assert job.cancel_requested is False
        assert (job.result, job.errors, job.finished_at, job.reason) == (None, (), None, None)
        assert (job.workflow_id, job.depends_on) == (None, ())

    def test_enqueue_returns_the_job_as_stored(self, harbor: Harbor) -> None:
        (result,) = harbor.driver.enqueue([EnqueueRequest("task", args=(1,))])
        assert result.created is True
        assert harbor.get(result.job.id) == result.job

    def test_a_job_without_run_at_is_available_now(self, harbor: Harbor) -> None:
        job = harbor.enqueue()
        assert job.state is JobState.AVAILABLE
        assert job.run_at == harbor.now()

    def test_a_job_with_run_at_in_the_future_is_scheduled_at_that_time(
        self, harbor: Harbor
    ) -> None:
        run_at = harbor.later(0.000001)
        job = harbor.enqueue(run_at=run_at)
        assert job.state is JobState.SCHEDULED
        assert job.run_at == run_at

    def test_a_job_with_run_at_now_or_past_is_available_and_keeps_run_at(
        self, harbor: Harbor
    ) -> None:
        for run_at in (harbor.now(), harbor.later(-60)):
            job = harbor.enqueue(run_at=run_at)
            assert job.state is JobState.AVAILABLE
            assert job.run_at == run_at

    def test_datetimes_come_back_in_utc_to_the_microsecond(self, harbor: Harbor) -> None:
        elsewhere = timezone(timedelta(hours=-5, minutes=-30))
        run_at = harbor.later(60.000001).astimezone(elsewhere)
        job = harbor.enqueue(run_at=run_at)
        stamps = (job.run_at, job.created_at)
        assert stamps == (run_at, harbor.now())
        assert all(stamp.utcoffset() == timedelta(0) for stamp in stamps)
        assert harbor.get(job.id).run_at.utcoffset() == timedelta(0)

    def test_ids_are_positive_and_increase_in_enqueue_order(self, harbor: Harbor) -> None:
        first = harbor.driver.enqueue([EnqueueRequest("a"), EnqueueRequest("b")])
        second = harbor.driver.enqueue([EnqueueRequest("c")])
        ids = [result.job.id for result in first + second]
        assert [result.job.task for result in first + second] == ["a", "b", "c"]
        assert ids[0] > 0
        assert ids == sorted(set(ids))

    def test_a_held_idempotency_key_returns_the_stored_job(self, harbor: Harbor) -> None:
        stored = harbor.enqueue("original", args=(1,), idempotency_key="k")
        before = harbor.snapshot()
        (again,) = harbor.driver.enqueue(
            [EnqueueRequest("other", args=(2,), queue="elsewhere", idempotency_key="k")]
        )
        assert again.created is False
        assert again.job == stored
        assert harbor.snapshot() == before

    def test_an_idempotency_key_is_held_whatever_the_jobs_state(self, harbor: Harbor) -> None:
        for state in JobState:
            if state is JobState.PENDING:
                continue  # workflow steps carry no idempotency key
            key = f"key-{state.value}"
            holder = harbor.job_in(state, idempotency_key=key)
            (again,) = harbor.driver.enqueue([EnqueueRequest("task", idempotency_key=key)])
            assert (again.created, again.job) == (False, holder), state

    def test_a_key_repeated_within_one_batch_maps_to_the_first_job(self, harbor: Harbor) -> None:
        results = harbor.driver.enqueue(
            [
                EnqueueRequest("a", idempotency_key="k"),
                EnqueueRequest("b"),
                EnqueueRequest("c", idempotency_key="k"),
            ]
        )
        assert [result.created for result in results] == [True, True, False]
        assert results[2].job == results[0].job
        assert len(harbor.all_jobs()) == 2

    def test_pruning_a_job_frees_its_idempotency_key(self, harbor: Harbor) -> None:
        old = harbor.enqueue(idempotency_key="k")
        harbor.finish(old)
        harbor.advance(10)
        assert harbor.driver.prune(harbor.now()) == 1
        (again,) = harbor.driver.enqueue([EnqueueRequest("task", idempotency_key="k")])
        assert again.created is True
        assert again.job.id > old.id
        assert again.job.state is JobState.AVAILABLE

    def test_json_text_with_nul_characters_round_trips_exactly(self, harbor: Harbor) -> None:
        payload = [NUL_TEXT, {NUL_TEXT: [NUL_TEXT, "\x00"]}]
        job = harbor.enqueue(args=(NUL_TEXT, payload), kwargs={NUL_TEXT: payload})
        for stored in (job, harbor.get(job.id)):
            assert stored.args == (NUL_TEXT, payload)
            assert dict(stored.kwargs) == {NUL_TEXT: payload}
        first = harbor.lease_job(job)
        assert first.lease_token is not None
        error = ErrorReport("ValueError", f"bad {NUL_TEXT}", f"Traceback {NUL_TEXT}")
        assert harbor.driver.fail([Failure(first.id, first.lease_token, error)]) == []
        harbor.advance(1)
        harbor.driver.promote()
        harbor.complete(harbor.lease_job(job), {"out": payload})
        done = harbor.get(job.id)
        assert done.result == {"out": payload}
        (failed,) = done.errors
        assert (failed.message, failed.traceback) == (error.message, error.traceback)
        chain = harbor.chain(EnqueueRequest("first", queue="nul-a"), EnqueueRequest("second"))
        step = harbor.lease(["nul-a"])[0]
        harbor.complete(step, NUL_TEXT)
        assert harbor.get(chain.steps[1]).args == (NUL_TEXT,)
