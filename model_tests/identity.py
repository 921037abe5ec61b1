"""The bijection between the driver's ids and tokens and the reference model's.

The driver under test and the model may number jobs and workflows differently
and will certainly issue different lease tokens.  The harness speaks the
model's language throughout: every id or token the driver returns is
translated into the model's before it is compared, and every id or token the
harness sends is translated into the driver's before the call.  Pairs are
linked as the two stores create them, in the same order (the n-th job created
by one is the n-th created by the other).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from taskharbor.spec import JSON, JobId, JobState, WorkflowId, dependency_reason

from .divergence import Divergence

K = TypeVar("K", bound=Hashable)


class Bijection(Generic[K]):
    """Model value <-> driver value, for one kind of identifier."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._to_driver: dict[K, K] = {}
        self._to_model: dict[K, K] = {}

    def link(self, model: K, driver: K) -> None:
        """Record that ``model`` and ``driver`` name the same thing (again is fine)."""
        known_driver = self._to_driver.get(model)
        known_model = self._to_model.get(driver)
        if known_driver is None and known_model is None:
            self._to_driver[model] = driver
            self._to_model[driver] = model
            return
        if known_driver != driver or known_model != model:
            raise Divergence(
                f"{self.kind}: the model's {model!r} now pairs with the driver's {driver!r}, "
                f"but earlier they paired with {known_driver!r} / {known_model!r}"
            )

    def to_driver(self, model: K) -> K:
        try:
            return self._to_driver[model]
        except KeyError:
            raise Divergence(f"{self.kind} {model!r} of the model has no driver twin") from None

    def to_model(self, driver: K) -> K:
        try:
            return self._to_model[driver]
        except KeyError:
            raise Divergence(
                f"the driver returned {self.kind} {driver!r}, which it never created "
                "alongside the model"
            ) from None

    def __contains__(self, model: object) -> bool:
        return model in self._to_driver


class IdentityMap:
    """Job ids, workflow ids and lease tokens, linked pairwise."""

    def __init__(self) -> None:
        self.jobs: Bijection[JobId] = Bijection("job id")
        self.workflows: Bijection[WorkflowId] = Bijection("workflow id")
        self.tokens: Bijection[str] = Bijection("lease token")
        self.callbacks: set[JobId] = set()
        """The driver's ids of failure callbacks, whose first arg (once released)
        names a workflow and a job in the driver's ids."""
        self.partial: set[JobId] = set()
        """The driver's ids of partial steps taking an input, whose second arg (once
        released) lists :func:`~taskharbor.spec.member_failure` in the driver's ids."""
        self._reasons: dict[str, str] = {}

    def link_job(self, model: JobId, driver: JobId) -> None:
        self.jobs.link(model, driver)
        # A cascade's reason names the job that ended badly, so it must be
        # translated like an id; remember every reason the pair can produce.
        for state in JobState:
            self._reasons[dependency_reason(driver, state)] = dependency_reason(model, state)

    def args_to_model(self, job_id: JobId, args: tuple[JSON, ...]) -> tuple[JSON, ...]:
        """A job's args in the model's ids: a released failure callback's first arg
        (:func:`~taskharbor.spec.step_failure`) names a workflow and a step, a released
        partial step's second arg lists failed steps."""
        if job_id in self.partial and len(args) >= 2 and _member_failures(args[1]):
            failures = [
                {
                    **failure,
                    "job_id": self.jobs.to_model(failure["job_id"]),
                    "reason": self.reason_to_model(failure["reason"]),
                }
                for failure in args[1]
            ]
            return (args[0], failures, *args[2:])
        if job_id not in self.callbacks or not args or not isinstance(args[0], dict):
            return args
        failure = dict(args[0])
        failure["workflow_id"] = self.workflows.to_model(failure["workflow_id"])
        failure["job_id"] = self.jobs.to_model(failure["job_id"])
        return (failure, *args[1:])

    def reason_to_model(self, reason: str | None) -> str | None:
        """A ``reason`` in the model's ids (reasons naming no job pass through)."""
        if reason is None:
            return None
        return self._reasons.get(reason, reason)


_FAILURE_FIELDS = frozenset(
    ("index", "job_id", "task", "state", "attempt", "type", "message", "reason")
)
"""The keys of :func:`~taskharbor.spec.member_failure`'s dict."""


def _member_failures(value: JSON) -> bool:
    """Whether ``value`` is a list of ``member_failure`` dicts (a drawn own arg never
    has exactly their fields)."""
    return isinstance(value, list) and all(
        isinstance(item, dict) and item.keys() == _FAILURE_FIELDS for item in value
    )
