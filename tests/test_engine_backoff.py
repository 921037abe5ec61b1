"""Retry delay policies."""

from __future__ import annotations

import pytest

import taskharbor as th
from taskharbor.backoff import as_backoff
from taskharbor.spec import (
    DEFAULT_RETRY,
    MAX_DURATION_SECONDS,
    InvalidRequest,
    RetryPolicy,
    retry_delay,
)


def test_exponential_without_jitter_doubles_up_to_the_cap() -> None:
    policy = th.Backoff.exponential(base=2.0, cap=20.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 20.0]
    assert policy.delay(10_000) == 20.0  # no overflow on huge attempt numbers


def test_exponential_full_jitter_stays_between_zero_and_the_ceiling() -> None:
    policy = th.Backoff.exponential(base=1.0, cap=300.0)
    draws = [policy.delay(4, job_id) for job_id in range(1, 201)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    assert min(draws) < 2.0 and max(draws) > 6.0  # spread over the whole range


def test_jitter_is_the_same_for_the_same_job_and_attempt_everywhere() -> None:
    policy = th.Backoff.exponential(base=10.0, cap=300.0)
    assert policy.delay(3, 17) == policy.delay(3, 17)
    assert policy.delay(3, 17) != policy.delay(3, 18)
    assert policy.delay(3, 17) == retry_delay(policy.policy, 17, 3).total_seconds()


def test_the_policies_are_data_stored_with_each_job() -> None:
    assert th.Backoff.exponential(2, 60, jitter=False, factor=3).policy == RetryPolicy(
        "exponential", base=2, cap=60, factor=3, jitter=False
    )
    assert th.Backoff.constant(3600).policy == RetryPolicy("constant", 3600, cap=3600, jitter=False)
    assert th.Backoff.linear(5).policy.cap == MAX_DURATION_SECONDS
    assert th.Backoff.custom(lambda attempt: 1.0).policy == DEFAULT_RETRY


def test_the_default_policy_is_exponential_with_jitter() -> None:
    policy = as_backoff(None)
    assert "exponential" in repr(policy) and "jitter=True" in repr(policy)
    assert 0.0 <= policy.delay(1) <= 1.0


def test_constant_and_linear() -> None:
    assert [th.Backoff.constant(3).delay(n) for n in (1, 5)] == [3.0, 3.0]
    linear = th.Backoff.linear(step=5, cap=12)
    assert [linear.delay(n) for n in (1, 2, 3)] == [5.0, 10.0, 12.0]


def test_a_callable_is_a_custom_policy_checked_at_every_use() -> None:
    policy = as_backoff(lambda attempt: attempt * 1.5)
    assert policy.delay(2) == 3.0
    broken = th.Backoff.custom(lambda attempt: -1.0)
    with pytest.raises(InvalidRequest, match="delay for attempt 1"):
        broken.delay(1)


@pytest.mark.parametrize(
    "build",
    [
        lambda: th.Backoff.constant(-1),
        lambda: th.Backoff.exponential(base=float("inf")),
        lambda: th.Backoff.linear(step=1, cap=-2),
        lambda: th.Backoff.custom(42),  # type: ignore[arg-type]
        lambda: th.Backoff.constant(1).delay(0),
        lambda: th.Backoff.constant(1e12),
        lambda: th.Backoff.exponential(factor=0.5),
        lambda: th.Backoff.custom(lambda attempt: 1e300).delay(1),
    ],
)
def test_bad_policies_are_refused(build: object) -> None:
    with pytest.raises(InvalidRequest):
        build()  # type: ignore[operator]
