"""Model-test rules of periodic schedules: declaring them, ticks, pause, run, drop.

A mixin of :class:`~taskharbor.model_tests.machine.DriverVsModel`, whose
helpers it uses; its rules apply only to a driver that declares the
``schedules`` capability.  The clock moves onto the next tick (or just past
it) so that ticks meet leases, retries and prunes of the other rules; the
invariant compares every stored schedule after each step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from taskharbor.spec import Driver, EnqueueRequest, FakeClock, JobId, JobRecord
from taskharbor.spec.schedules import Schedule, ScheduleRecord

from .divergence import Divergence
from .observe import sequence_differences
from .strategies import QUEUES, TASKS

if TYPE_CHECKING:
    from .identity import IdentityMap

SCHEDULE_NAMES = ("hourly", "fast", "ghost")
"""Names the rules draw; ``ghost`` is never declared, so calls naming it are refused."""

DECLARED_NAMES = SCHEDULE_NAMES[:2]

TIMINGS: tuple[dict[str, Any], ...] = (
    {"every": 30},
    {"every": 45},
    {"every": 3600},
    {"cron": "* * * * *"},
    {"cron": "*/2 * * * *", "tz": "Europe/Paris"},
)

SCHEDULES = st.builds(
    lambda name, timing, task, queue, missed, grace, catch_up, jitter, skip: Schedule(
        name,
        EnqueueRequest(task, args=(name,), queue=queue),
        missed=missed,
        grace=grace,
        catch_up=catch_up,
        jitter=jitter,
        skip_if_running=skip,
        **timing,
    ),
    name=st.sampled_from(DECLARED_NAMES),
    timing=st.sampled_from(TIMINGS),
    task=st.sampled_from(TASKS),
    queue=st.sampled_from(QUEUES),
    missed=st.sampled_from(("latest", "none", "all")),
    grace=st.sampled_from((0.0, 30.0, 120.0)),
    catch_up=st.sampled_from((1, 3)),
    jitter=st.sampled_from((0.0, 7.5)),
    skip=st.booleans(),
)

NAME_BATCHES = st.lists(st.sampled_from(SCHEDULE_NAMES), min_size=1, max_size=3, unique=True)

TICK_OFFSETS = (timedelta(0), timedelta(seconds=1), timedelta(seconds=200))
"""Where the clock lands after the next tick: on it, just after, or past grace."""


class ScheduleSteps:
    """Rules on schedules; mixed into the driver-versus-model state machine."""

    clock: FakeClock
    model: Driver
    driver: Driver
    ids: IdentityMap
    created: list[JobId]
    declared: set[str]

    _both: Callable[..., Any]
    _link_new_job: Callable[[JobId, JobId], None]
    _compare_jobs: Callable[[str, Sequence[JobRecord], Sequence[JobRecord]], None]

    def _schedules_supported(self) -> bool:
        return self.driver.capabilities.schedules

    @precondition(lambda self: self._schedules_supported())
    @rule(schedules=st.lists(SCHEDULES, min_size=1, max_size=2, unique_by=lambda s: s.name))
    def declare_schedules(self, schedules: list[Schedule]) -> None:
        outcome = self._both(
            "sync_schedules",
            lambda: self.model.sync_schedules(schedules),
            lambda: self.driver.sync_schedules(schedules),
        )
        if outcome is not None:
            self.declared.update(schedule.name for schedule in schedules)
            expected, got = outcome
            self._compare_schedules("sync_schedules", expected, got)

    @precondition(lambda self: bool(self.declared))
    @rule(names=NAME_BATCHES)
    def enqueue_due_ticks(self, names: list[str]) -> None:
        outcome = self._both(
            "enqueue_due_ticks",
            lambda: self.model.enqueue_due_ticks(names),
            lambda: self.driver.enqueue_due_ticks(names),
        )
        if outcome is None:
            return
        expected, got = outcome
        if len(expected.jobs) != len(got.jobs) or expected.next_tick != got.next_tick:
            raise Divergence(f"enqueue_due_ticks: model={expected} driver={got}")
        for mine, theirs in zip(expected.jobs, got.jobs, strict=True):
            self._link_new_job(mine.id, theirs.id)
        self._compare_jobs("enqueue_due_ticks", expected.jobs, got.jobs)

    @precondition(lambda self: bool(self.declared))
    @rule(offset=st.sampled_from(TICK_OFFSETS), names=NAME_BATCHES)
    def next_tick_comes(self, offset: timedelta, names: list[str]) -> None:
        """Move the clock onto (or past) the earliest next tick, then enqueue due ticks."""
        ticks = [record.next_tick() for record in self.model.list_schedules()]
        if ticks:
            self.clock.set(max(self.clock.now(), min(ticks) + offset))
        self.enqueue_due_ticks(names)

    @precondition(lambda self: bool(self.declared))
    @rule(names=NAME_BATCHES, paused=st.booleans())
    def pause_schedules(self, names: list[str], paused: bool) -> None:
        outcome = self._both(
            "pause_schedules",
            lambda: self.model.pause_schedules(names, paused),
            lambda: self.driver.pause_schedules(names, paused),
        )
        if outcome is not None:
            self._compare_schedules("pause_schedules", *outcome)

    @precondition(lambda self: bool(self.declared))
    @rule(name=st.sampled_from(SCHEDULE_NAMES))
    def run_schedule(self, name: str) -> None:
        outcome = self._both(
            "run_schedule",
            lambda: self.model.run_schedule(name),
            lambda: self.driver.run_schedule(name),
        )
        if outcome is None:
            return
        expected, got = outcome
        if expected.id not in self.created:
            self._link_new_job(expected.id, got.id)
        self._compare_jobs("run_schedule", [expected], [got])

    @precondition(lambda self: bool(self.declared))
    @rule(names=NAME_BATCHES)
    def drop_schedules(self, names: list[str]) -> None:
        outcome = self._both(
            "drop_schedules",
            lambda: self.model.drop_schedules(names),
            lambda: self.driver.drop_schedules(names),
        )
        if outcome is not None:
            self.declared.difference_update(names)

    @invariant()
    def schedules_agree(self) -> None:
        if self._schedules_supported():
            self._compare_schedules(
                "stored schedules", self.model.list_schedules(), self.driver.list_schedules()
            )

    def _compare_schedules(
        self, what: str, expected: Sequence[ScheduleRecord], got: Sequence[ScheduleRecord]
    ) -> None:
        translated = [
            replace(record, last_job_id=self._model_id(record.last_job_id)) for record in got
        ]
        problems = sequence_differences("schedule", list(expected), translated)
        if problems:
            raise Divergence(f"{what}:\n  " + "\n  ".join(problems))

    def _model_id(self, driver_id: JobId | None) -> JobId | None:
        return None if driver_id is None else self.ids.jobs.to_model(driver_id)
