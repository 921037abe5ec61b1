"""Model-test steps of paused queues: pause and resume meet every other rule.

A mixin of :class:`~taskharbor.model_tests.machine.DriverVsModel`, for a
driver that declares the ``queue_pause`` capability.  The machine's ``lease``
rule draws a pause or resume to make first (not a rule of its own, so the
other rules keep their share of the steps); leases, compared job by job, then
meet paused queues, and the invariant compares the stored pauses after each
step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import invariant

from taskharbor.spec import Driver
from taskharbor.spec.queues import QueueRecord

from .divergence import Divergence
from .observe import sequence_differences
from .strategies import QUEUES

QUEUE_BATCHES = st.lists(st.sampled_from((*QUEUES, "idle")), min_size=1, max_size=3, unique=True)
"""Queues to pause or resume: the jobs' queues, and ``idle``, which no job names."""

PAUSES = st.one_of(st.none(), st.tuples(QUEUE_BATCHES, st.booleans()))
"""What the ``lease`` rule does first: nothing, or pause (True) or resume queues."""


class QueueSteps:
    """Rules on paused queues; mixed into the driver-versus-model state machine."""

    model: Driver
    driver: Driver
    _both: Callable[..., Any]

    def _pause_supported(self) -> bool:
        return self.driver.capabilities.queue_pause

    def pause_queues(self, queues: list[str], paused: bool) -> None:
        """Pause or resume on both stores (drawn by the machine's ``lease`` rule, just
        before it leases, so a pause meets the lease it is for)."""
        outcome = self._both(
            "pause_queues",
            lambda: self.model.pause_queues(queues, paused),
            lambda: self.driver.pause_queues(queues, paused),
        )
        if outcome is not None:
            self._compare_queues("pause_queues", *outcome)

    @invariant()
    def paused_queues_agree(self) -> None:
        if self._pause_supported():
            self._compare_queues(
                "paused queues", self.model.paused_queues(), self.driver.paused_queues()
            )

    def _compare_queues(
        self, what: str, expected: Sequence[QueueRecord], got: Sequence[QueueRecord]
    ) -> None:
        problems = sequence_differences("queue", list(expected), list(got))
        if problems:
            raise Divergence(f"{what}:\n  " + "\n  ".join(problems))
