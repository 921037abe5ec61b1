"""Periodic jobs: schedules declared in code, ticked by every worker, one job per tick.

``app.periodic(...)`` turns a signature and a cron expression (or an
interval) into a :class:`~taskharbor.spec.schedules.Schedule`, checked at
declaration.  Each :class:`~taskharbor.Worker` (unless started with
``periodic=False``) stores the app's schedules once (``sync_schedules``) and
then, in its maintenance pass, asks the store to enqueue the due ticks
(``enqueue_due_ticks``): the store makes one job per (schedule, tick) however
many workers ask, so there is no leader and no single scheduler process to
keep alive.  See docs/guide.md, "Periodic jobs".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from taskharbor.spec import InvalidRequest
from taskharbor.spec.schedules import MissedPolicy, Schedule, ScheduleNotFound, TickResult

from .canvas import Signature
from .task import Task

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger("taskharbor.periodic")


def every_seconds(every: timedelta | float | None, name: str) -> int | None:
    """An interval as whole seconds; a fraction of a second is refused, not rounded."""
    if every is None:
        return None
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise InvalidRequest(
            f"schedule {name!r}: every must be a timedelta or seconds, not {every!r}"
        )
    if seconds != int(seconds) or seconds < 1:
        raise InvalidRequest(
            f"schedule {name!r}: every must be a whole number of seconds >= 1, not {seconds:g}"
        )
    return int(seconds)


class Schedules:
    """An app's declared schedules, by name (``app.schedules``)."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._by_name: dict[str, Schedule] = {}

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Schedule:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def declare(
        self,
        target: Signature | Task[Any],
        *,
        cron: str | None,
        every: timedelta | float | None,
        tz: str | None,
        name: str | None,
        missed: MissedPolicy,
        grace: float,
        catch_up: int,
        jitter: float,
        skip_if_running: bool,
    ) -> Schedule:
        """Check and add one schedule; see :meth:`taskharbor.App.periodic`."""
        if isinstance(target, Task):
            target = target.s()
        if not isinstance(target, Signature):
            raise InvalidRequest(
                f"app.periodic takes a signature (task.s(...)) or a task, not {target!r}"
            )
        schedule_name = target.task if name is None else name
        request = self._app.request_for(target)
        schedule = Schedule(
            name=schedule_name,
            request=request,
            cron=cron,
            every=every_seconds(every, schedule_name),
            tz="UTC" if tz is None else tz,
            missed=missed,
            grace=grace,
            catch_up=catch_up,
            jitter=jitter,
            skip_if_running=skip_if_running,
        )
        if schedule.name in self._by_name:
            raise InvalidRequest(
                f"a schedule named {schedule.name!r} is already declared "
                "(give each schedule of one task its own name=)"
            )
        self._by_name[schedule.name] = schedule
        return schedule


def periodic_decorator(
    app: App, declare: Callable[[Signature | Task[Any]], Schedule]
) -> Callable[[Any], Task[Any]]:
    """The decorator form: schedule a task without arguments (a plain function becomes a task)."""

    def decorate(fn: Any) -> Task[Any]:
        task = fn if isinstance(fn, Task) else app.task(fn)
        declare(task)
        return task

    return decorate


class Ticker:
    """What one worker does for the app's schedules in each maintenance pass.

    Blocking (driver calls): the worker runs it on an I/O thread.  It syncs
    the schedules once, then asks the store for due ticks at every pass
    (one short transaction): a pause, a resume or a drop by an operator is
    seen within one pass, and the worker sleeps no longer than until the
    next tick the store names.
    """

    def __init__(self, app: App) -> None:
        self._app = app
        self._synced = False
        self._warned = False
        self._lock = threading.Lock()

    def run(self) -> TickResult | None:
        """Enqueue the due ticks of the app's schedules; the store's answer (None: none)."""
        schedules = list(self._app.schedules)
        if not schedules:
            return None
        driver = self._app.driver
        if not driver.capabilities.schedules:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "%s does not keep schedules (capability 'schedules'): "
                    "the app's periodic schedules do not run on it",
                    type(driver).__name__,
                )
            return None
        with self._lock:
            if not self._synced:
                self._sync(schedules)
            names = [schedule.name for schedule in schedules]
            try:
                result = self._app.driver.enqueue_due_ticks(names)
            except ScheduleNotFound as gone:
                # an operator dropped a schedule this code still declares: it comes back afresh
                logger.warning(
                    "schedule %r was dropped from the store; declaring it again", gone.name
                )
                self._sync(schedules)
                result = self._app.driver.enqueue_due_ticks(names)
            for job in result.jobs:
                logger.info("periodic job %d of %s enqueued for %s", job.id, job.task, job.run_at)
            return result

    def _sync(self, schedules: Sequence[Schedule]) -> None:
        self._app.driver.sync_schedules(schedules)
        self._synced = True
