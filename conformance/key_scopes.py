"""Rules of an idempotency key's scope (:mod:`taskharbor.spec.keys`): how long a job
holds its key, which job an enqueue answers with, and what a requeue or a prune
does to a key given up."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from taskharbor.spec import (
    MAX_KEY_WINDOW_SECONDS,
    UNTIL_FINISHED,
    UNTIL_PRUNED,
    EnqueueRequest,
    EnqueueResult,
    InvalidRequest,
    JobRecord,
    JobState,
    KeyHold,
    KeyScope,
)
from taskharbor.spec.table import FINISHED_JOB_STATES

from .harness import Harbor, HarborFixture, requires

WINDOW = KeyScope.window(600)
"""Ten minutes from enqueue."""

UNFINISHED_STATES = [s for s in JobState if s not in FINISHED_JOB_STATES and s != JobState.PENDING]
"""The unfinished states a keyed job can be in (workflow steps, the pending ones, carry no key)."""


def again(harbor: Harbor, key: str = "k", **fields: Any) -> EnqueueResult:
    """Enqueue one more request with ``key``."""
    (result,) = harbor.driver.enqueue([EnqueueRequest("again", idempotency_key=key, **fields)])
    return result


def taken_over(harbor: Harbor, old: JobRecord, scope: KeyScope = UNTIL_FINISHED) -> JobRecord:
    """Enqueue with ``old``'s key, which it no longer holds; the new job that takes it."""
    result = again(harbor, str(old.idempotency_key), key_scope=scope)
    assert result.created, f"job {old.id} still holds its key"
    return result.job


BAD_SCOPES: dict[str, tuple[Callable[[], EnqueueRequest], str]] = {
    "window-zero": (lambda: keyed(KeyScope(KeyHold.WINDOW, 0)), "key window must be positive"),
    "window-negative": (lambda: keyed(KeyScope.window(-1)), "key window must be positive"),
    "window-nan": (lambda: keyed(KeyScope.window(float("nan"))), "positive and finite"),
    "window-infinite": (lambda: keyed(KeyScope.window(float("inf"))), "positive and finite"),
    "window-too-long": (
        lambda: keyed(KeyScope.window(MAX_KEY_WINDOW_SECONDS + 1)),
        "key window of .* is too long",
    ),
    "window-a-bool": (lambda: keyed(KeyScope.window(True)), "number of seconds"),
    "window-a-string": (lambda: keyed(KeyScope.window("600")), "number of seconds"),  # type: ignore[arg-type]
    "window-without-seconds": (lambda: keyed(KeyScope(KeyHold.WINDOW)), "number of seconds"),
    "unfinished-with-seconds": (
        lambda: keyed(KeyScope(KeyHold.UNFINISHED, 600)),
        "key scope 'unfinished' takes no seconds",
    ),
    "hold-a-string": (
        lambda: keyed(KeyScope("unfinished")),  # type: ignore[arg-type]
        "key scope hold must be one of",
    ),
    "scope-a-string": (lambda: keyed("unfinished"), "key_scope must be a KeyScope"),  # type: ignore[arg-type]
    "scope-without-key": (
        lambda: EnqueueRequest("bad", key_scope=UNTIL_FINISHED),
        "key_scope while unfinished needs an idempotency_key",
    ),
}
"""Each bad scope, as a request built inside the refused call, and what its error says."""


def keyed(scope: KeyScope) -> EnqueueRequest:
    """A keyed request with ``scope``."""
    return EnqueueRequest("bad", idempotency_key="k", key_scope=scope)


class KeyScopeRules(HarborFixture):
    @pytest.mark.parametrize("name", list(BAD_SCOPES))
    def test_a_bad_scope_is_refused_naming_it_and_changes_nothing(
        self, harbor: Harbor, name: str
    ) -> None:
        harbor.enqueue(idempotency_key="k")
        before = harbor.snapshot()
        build, message = BAD_SCOPES[name]
        with pytest.raises(InvalidRequest, match=message):
            harbor.driver.enqueue([EnqueueRequest("ok"), build()])
        assert harbor.snapshot() == before

    @requires("key_scopes")
    def test_a_job_keeps_its_key_and_scope(self, harbor: Harbor) -> None:
        for key, scope in (("a", UNTIL_PRUNED), ("b", UNTIL_FINISHED), ("c", KeyScope.window(0.5))):
            job = harbor.enqueue(idempotency_key=key, key_scope=scope)
            assert (job.idempotency_key, job.key_scope) == (key, scope)
            assert harbor.get(job.id) == job

    def test_the_default_scope_holds_a_finished_job_s_key_until_it_is_pruned(
        self, harbor: Harbor
    ) -> None:
        holder = harbor.job_in(JobState.SUCCEEDED, idempotency_key="k")
        assert holder.key_scope == UNTIL_PRUNED
        harbor.advance(MAX_KEY_WINDOW_SECONDS + 1)
        assert (again(harbor).created, again(harbor).job) == (False, holder)

    @requires("key_scopes")
    @pytest.mark.parametrize("state", sorted(FINISHED_JOB_STATES))
    def test_an_unfinished_scope_frees_the_key_when_its_job_finishes(
        self, harbor: Harbor, state: JobState
    ) -> None:
        old = harbor.job_in(state, idempotency_key="k", key_scope=UNTIL_FINISHED)
        new = taken_over(harbor, old, UNTIL_PRUNED)
        assert new.id > old.id
        assert (new.state, new.idempotency_key, new.key_scope) == (
            JobState.AVAILABLE,
            "k",
            UNTIL_PRUNED,
        )
        assert harbor.get(old.id) == old  # it keeps its record, key included
        assert (again(harbor).created, again(harbor).job) == (False, new)

    @requires("key_scopes")
    @pytest.mark.parametrize("state", UNFINISHED_STATES)
    def test_an_unfinished_scope_holds_the_key_while_its_job_is_unfinished(
        self, harbor: Harbor, state: JobState
    ) -> None:
        holder = harbor.job_in(state, idempotency_key="k", key_scope=UNTIL_FINISHED)
        before = harbor.snapshot()
        result = again(harbor, key_scope=UNTIL_FINISHED)
        assert (result.created, result.job) == (False, holder)
        assert harbor.snapshot() == before

    @requires("key_scopes")
    def test_a_window_holds_the_key_until_exactly_its_end(self, harbor: Harbor) -> None:
        holder = harbor.enqueue(idempotency_key="k", key_scope=WINDOW)
        harbor.advance(599.999999)
        assert (again(harbor).created, again(harbor).job) == (False, holder)
        harbor.advance(0.000001)
        new = taken_over(harbor, holder, WINDOW)
        assert new.created_at == holder.created_at + timedelta(seconds=600)
        assert (new.key_scope, harbor.get(holder.id)) == (WINDOW, holder)

    @requires("key_scopes")
    def test_a_window_holds_the_key_whatever_its_job_s_state(self, harbor: Harbor) -> None:
        for state in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED, JobState.RUNNING):
            holder = harbor.job_in(state, idempotency_key=f"k-{state}", key_scope=WINDOW)
            result = again(harbor, f"k-{state}")
            assert (result.created, result.job) == (False, holder), state

    @requires("key_scopes")
    def test_a_window_of_a_fraction_of_a_second_ends_to_the_microsecond(
        self, harbor: Harbor
    ) -> None:
        holder = harbor.enqueue(idempotency_key="k", key_scope=KeyScope.window(0.25))
        harbor.advance(0.249999)
        assert again(harbor).job == holder
        harbor.advance(0.000001)
        taken_over(harbor, holder)

    @requires("key_scopes")
    def test_the_holder_s_scope_decides_not_the_new_request_s(self, harbor: Harbor) -> None:
        kept = harbor.job_in(JobState.SUCCEEDED, idempotency_key="kept")
        freed = harbor.job_in(JobState.SUCCEEDED, idempotency_key="freed", key_scope=WINDOW)
        harbor.advance(600)
        assert again(harbor, "kept", key_scope=UNTIL_FINISHED).job == kept
        assert again(harbor, "kept", key_scope=KeyScope.window(1)).job == kept
        assert taken_over(harbor, freed, UNTIL_PRUNED).key_scope == UNTIL_PRUNED

    @requires("key_scopes")
    def test_a_key_repeated_in_one_batch_maps_to_the_job_that_took_it(self, harbor: Harbor) -> None:
        old = harbor.job_in(JobState.SUCCEEDED, idempotency_key="k", key_scope=UNTIL_FINISHED)
        results = harbor.driver.enqueue(
            [
                EnqueueRequest("a", idempotency_key="k", key_scope=UNTIL_FINISHED),
                EnqueueRequest("b"),
                EnqueueRequest("c", idempotency_key="k", key_scope=WINDOW),
            ]
        )
        assert [result.created for result in results] == [True, True, False]
        assert results[2].job == results[0].job
        assert results[0].job.id > old.id
        assert results[0].job.key_scope == UNTIL_FINISHED
        assert len(harbor.all_jobs()) == 3

    @requires("key_scopes")
    def test_a_requeued_job_that_gave_its_key_up_runs_without_it(self, harbor: Harbor) -> None:
        old = harbor.job_in(JobState.DEAD, idempotency_key="k", key_scope=UNTIL_FINISHED)
        new = taken_over(harbor, old)
        (requeued,) = harbor.driver.requeue([old.id])
        assert (requeued.state, requeued.idempotency_key) == (JobState.AVAILABLE, "k")
        assert again(harbor).job == new  # the newer job keeps the key
        harbor.finish(new)
        newest = taken_over(harbor, harbor.get(new.id))  # the requeued job never holds it again
        assert newest.id > new.id
        assert again(harbor).job == newest

    @requires("key_scopes")
    def test_a_requeued_job_that_kept_its_key_holds_it_again(self, harbor: Harbor) -> None:
        old = harbor.job_in(JobState.DEAD, idempotency_key="k", key_scope=UNTIL_FINISHED)
        (requeued,) = harbor.driver.requeue([old.id])
        result = again(harbor)
        assert (result.created, result.job) == (False, requeued)

    @requires("key_scopes")
    def test_pruning_a_job_that_gave_its_key_up_leaves_the_key_to_its_holder(
        self, harbor: Harbor
    ) -> None:
        old = harbor.job_in(JobState.SUCCEEDED, idempotency_key="k", key_scope=UNTIL_FINISHED)
        new = taken_over(harbor, old)
        harbor.advance(1)
        assert harbor.driver.prune(harbor.now()) == 1
        assert harbor.driver.get([new.id]) == [new]
        assert (again(harbor).created, again(harbor).job) == (False, new)
