"""Rules of periodic schedules: one job per (schedule, tick), missed ticks, pause, bad input.

Every test here needs the ``schedules`` capability.  Ticks are computed by
:mod:`taskharbor.spec.schedules`; the store's part is to apply those rules
to what it stores, atomically, so that many callers make one job per tick.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskharbor.spec import EnqueueRequest, InvalidRequest, JobState
from taskharbor.spec.schedules import (
    Schedule,
    ScheduleNotFound,
    ScheduleRecord,
    jitter_offset,
    tick_key,
    tick_of,
)

from .harness import Harbor, HarborFixture, requires

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def every(name: str = "tick", seconds: int = 60, **fields: Any) -> Schedule:
    """A schedule of task ``beat`` every ``seconds``, with ``fields`` as Schedule's."""
    request = fields.pop("request", EnqueueRequest("beat", args=(name,), queue="periodic"))
    return Schedule(name=name, request=request, every=seconds, **fields)


def next_boundary(moment: datetime, seconds: int) -> datetime:
    """The first multiple of ``seconds`` since the epoch after ``moment``."""
    elapsed = (moment - EPOCH) // timedelta(seconds=seconds)
    return EPOCH + timedelta(seconds=seconds) * (elapsed + 1)


def sync(harbor: Harbor, *schedules: Schedule) -> list[ScheduleRecord]:
    return harbor.driver.sync_schedules(list(schedules))


def ticks(harbor: Harbor, *names: str) -> list[datetime]:
    """Run ``enqueue_due_ticks`` and return the ticks of the jobs it created."""
    result = harbor.driver.enqueue_due_ticks(list(names or ["tick"]))
    found = []
    for job in result.jobs:
        of = tick_of(job)
        assert of is not None, f"job {job.id} has no tick key"
        found.append(of[1])
    return found


def record(harbor: Harbor, name: str = "tick") -> ScheduleRecord:
    (found,) = [r for r in harbor.driver.list_schedules() if r.name == name]
    return found


class ScheduleRules(HarborFixture):
    def test_a_new_schedule_starts_at_now_unpaused(self, harbor: Harbor) -> None:
        (stored,) = sync(harbor, every())
        assert stored == ScheduleRecord(every(), paused=False, cursor=harbor.now())
        assert harbor.driver.list_schedules() == [stored]
        assert ticks(harbor) == []

    def test_each_due_tick_makes_one_job_at_its_instant(self, harbor: Harbor) -> None:
        sync(harbor, every(missed="all"))
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first + timedelta(seconds=150))
        assert ticks(harbor) == [
            first,
            first + timedelta(seconds=60),
            first + timedelta(seconds=120),
        ]
        assert ticks(harbor) == []
        jobs = harbor.all_jobs()
        assert [job.run_at for job in jobs] == [first + timedelta(seconds=60 * i) for i in range(3)]
        assert {(job.task, job.args, job.queue, job.state) for job in jobs} == {
            ("beat", ("tick",), "periodic", JobState.AVAILABLE)
        }
        assert [job.idempotency_key for job in jobs] == [tick_key("tick", j.run_at) for j in jobs]
        assert record(harbor).cursor == first + timedelta(seconds=120)
        assert record(harbor).last_job_id == jobs[-1].id

    def test_jobs_come_schedule_by_schedule_in_the_order_named(self, harbor: Harbor) -> None:
        sync(harbor, every("a", missed="all"), every("b", missed="all"))
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first + timedelta(seconds=60))
        result = harbor.driver.enqueue_due_ticks(["b", "a"])
        made = [tick_of(job) for job in result.jobs]
        later = first + timedelta(seconds=60)
        assert made == [("b", first), ("b", later), ("a", first), ("a", later)]
        assert [job.id for job in result.jobs] == sorted(job.id for job in result.jobs)

    def test_a_tick_exactly_at_now_is_due(self, harbor: Harbor) -> None:
        sync(harbor, every())
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first - timedelta(microseconds=1))
        assert ticks(harbor) == []
        harbor.clock.set(first)
        assert ticks(harbor) == [first]

    def test_the_result_tells_the_next_tick_of_unpaused_schedules(self, harbor: Harbor) -> None:
        sync(harbor, every("a", 60), every("b", 3600))
        result = harbor.driver.enqueue_due_ticks(["a", "b"])
        assert result.next_tick == next_boundary(harbor.now(), 60)
        harbor.driver.pause_schedules(["a"], True)
        result = harbor.driver.enqueue_due_ticks(["a", "b"])
        assert result.next_tick == next_boundary(harbor.now(), 3600)
        harbor.driver.pause_schedules(["b"], True)
        assert harbor.driver.enqueue_due_ticks(["a", "b"]).next_tick is None

    def test_many_callers_at_once_make_one_job_per_tick(self, harbor: Harbor) -> None:
        sync(harbor, every(missed="all", seconds=1))
        harbor.advance(5)
        made: list[int] = []
        barrier = threading.Barrier(6)

        def caller() -> None:
            barrier.wait()
            made.extend(job.id for job in harbor.driver.enqueue_due_ticks(["tick"]).jobs)

        threads = [threading.Thread(target=caller) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        jobs = harbor.all_jobs()
        assert len(jobs) == 5
        assert sorted(made) == [job.id for job in jobs]
        assert len({job.run_at for job in jobs}) == 5

    def test_a_tick_whose_job_was_pruned_does_not_run_again(self, harbor: Harbor) -> None:
        sync(harbor, every())
        harbor.clock.set(next_boundary(harbor.now(), 60))
        assert ticks(harbor)
        harbor.finish(harbor.all_jobs()[0])
        harbor.advance(1)
        assert harbor.driver.prune(harbor.now()) == 1
        assert ticks(harbor) == []
        assert harbor.all_jobs() == []

    def test_a_caller_that_read_an_old_cursor_finds_the_tick_job(self, harbor: Harbor) -> None:
        """The key holds even if a store's cursor lagged: the tick's job is not made twice."""
        schedule = every()
        sync(harbor, schedule)
        first = next_boundary(harbor.now(), 60)
        harbor.driver.enqueue(
            [
                EnqueueRequest(
                    "beat", args=("tick",), run_at=first, idempotency_key=tick_key("tick", first)
                )
            ]
        )
        harbor.clock.set(first)
        assert ticks(harbor) == []
        assert len(harbor.all_jobs()) == 1
        assert record(harbor).last_job_id == harbor.all_jobs()[0].id

    def test_missed_latest_runs_the_most_recent_missed_tick_once(self, harbor: Harbor) -> None:
        sync(harbor, every(grace=30))
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first + timedelta(seconds=60 * 9 + 45))
        assert ticks(harbor) == [first + timedelta(seconds=60 * 9)]
        assert record(harbor).cursor == first + timedelta(seconds=60 * 9)

    def test_missed_ticks_fold_into_an_on_time_one(self, harbor: Harbor) -> None:
        sync(harbor, every(seconds=10, grace=25))
        first = next_boundary(harbor.now(), 10)
        harbor.clock.set(first + timedelta(seconds=95))
        assert ticks(harbor) == [first + timedelta(seconds=s) for s in (70, 80, 90)]

    def test_missed_none_runs_only_on_time_ticks(self, harbor: Harbor) -> None:
        sync(harbor, every(missed="none", grace=30))
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first + timedelta(seconds=60 * 4 + 31))
        assert ticks(harbor) == []
        assert record(harbor).cursor == first + timedelta(seconds=60 * 4)
        harbor.clock.set(first + timedelta(seconds=60 * 5 + 30))
        assert ticks(harbor) == [first + timedelta(seconds=60 * 5)]

    def test_missed_all_runs_every_tick_up_to_catch_up(self, harbor: Harbor) -> None:
        sync(harbor, every(missed="all", catch_up=3, grace=0))
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first + timedelta(seconds=60 * 7))
        assert ticks(harbor) == [first + timedelta(seconds=60 * m) for m in (5, 6, 7)]
        assert ticks(harbor) == []

    def test_a_paused_schedule_runs_nothing_and_resumes_from_now(self, harbor: Harbor) -> None:
        sync(harbor, every(missed="all"))
        (paused,) = harbor.driver.pause_schedules(["tick"], True)
        assert paused.paused
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first + timedelta(seconds=130))
        assert ticks(harbor) == []
        harbor.advance(200)
        (resumed,) = harbor.driver.pause_schedules(["tick"], False)
        assert not resumed.paused
        assert resumed.cursor == harbor.now()
        assert ticks(harbor) == []
        harbor.clock.set(next_boundary(harbor.now(), 60))
        assert ticks(harbor) == [harbor.now()]
        assert len(harbor.all_jobs()) == 1

    def test_pausing_twice_and_resuming_a_running_schedule_change_nothing(
        self, harbor: Harbor
    ) -> None:
        (stored,) = sync(harbor, every())
        harbor.advance(10)
        assert harbor.driver.pause_schedules(["tick"], False) == [stored]
        (paused,) = harbor.driver.pause_schedules(["tick"], True)
        assert harbor.driver.pause_schedules(["tick"], True) == [paused]

    def test_skip_if_running_skips_ticks_while_the_last_job_is_unfinished(
        self, harbor: Harbor
    ) -> None:
        sync(harbor, every(skip_if_running=True))
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first)
        assert ticks(harbor) == [first]
        job = harbor.lease(["periodic"])[0]
        harbor.clock.set(first + timedelta(seconds=60))
        assert ticks(harbor) == []
        assert record(harbor).cursor == first + timedelta(seconds=60)
        harbor.complete(job)
        harbor.clock.set(first + timedelta(seconds=120))
        assert ticks(harbor) == [first + timedelta(seconds=120)]

    def test_jitter_delays_each_job_by_its_own_offset(self, harbor: Harbor) -> None:
        schedule = every(jitter=30.0)
        sync(harbor, schedule)
        first = next_boundary(harbor.now(), 60)
        harbor.clock.set(first)
        assert ticks(harbor) == [first]
        (job,) = harbor.all_jobs()
        offset = jitter_offset(schedule, first)
        assert timedelta(0) <= offset <= timedelta(seconds=30)
        assert job.run_at == first + offset
        assert job.state is (JobState.SCHEDULED if offset else JobState.AVAILABLE)

    def test_a_changed_template_keeps_the_cursor(self, harbor: Harbor) -> None:
        (old,) = sync(harbor, every())
        harbor.advance(600)
        changed = every(request=EnqueueRequest("beat", args=("v2",), queue="periodic"))
        (stored,) = sync(harbor, changed)
        assert stored == ScheduleRecord(changed, paused=False, cursor=old.cursor)
        assert ticks(harbor)
        assert harbor.all_jobs()[-1].args == ("v2",)

    def test_a_changed_timing_restarts_from_now_and_keeps_pause(self, harbor: Harbor) -> None:
        sync(harbor, every())
        harbor.driver.pause_schedules(["tick"], True)
        harbor.advance(600)
        (stored,) = sync(harbor, every(seconds=30))
        assert (stored.cursor, stored.paused) == (harbor.now(), True)

    def test_run_schedule_enqueues_one_job_now_even_when_paused(self, harbor: Harbor) -> None:
        (before,) = sync(harbor, every())
        harbor.driver.pause_schedules(["tick"], True)
        harbor.advance(1)
        job = harbor.driver.run_schedule("tick")
        assert (job.task, job.args, job.run_at, job.state) == (
            "beat",
            ("tick",),
            harbor.now(),
            JobState.AVAILABLE,
        )
        assert tick_of(job) == ("tick", harbor.now())
        stored = record(harbor)
        assert (stored.last_job_id, stored.cursor) == (job.id, before.cursor)

    def test_drop_forgets_a_schedule_and_a_new_sync_starts_afresh(self, harbor: Harbor) -> None:
        sync(harbor, every("a"), every("b"))
        harbor.clock.set(next_boundary(harbor.now(), 60))
        ticks(harbor, "a")
        harbor.driver.drop_schedules(["a"])
        assert [r.name for r in harbor.driver.list_schedules()] == ["b"]
        assert len(harbor.all_jobs()) == 1
        harbor.advance(1)
        (again,) = sync(harbor, every("a"))
        assert (again.cursor, again.last_job_id) == (harbor.now(), None)

    @pytest.mark.parametrize("call", ["enqueue_due_ticks", "pause", "run", "drop"])
    def test_an_unknown_name_raises_and_changes_nothing(self, harbor: Harbor, call: str) -> None:
        sync(harbor, every("a", seconds=1))
        harbor.advance(5)
        before = harbor.driver.list_schedules(), harbor.snapshot()
        driver = harbor.driver
        with pytest.raises(ScheduleNotFound, match="'ghost'"):
            if call == "enqueue_due_ticks":
                driver.enqueue_due_ticks(["a", "ghost"])
            elif call == "pause":
                driver.pause_schedules(["a", "ghost"], True)
            elif call == "run":
                driver.run_schedule("ghost")
            else:
                driver.drop_schedules(["a", "ghost"])
        assert (driver.list_schedules(), harbor.snapshot()) == before

    @pytest.mark.parametrize(
        ("call", "match"),
        [
            (lambda d: d.sync_schedules([]), "empty batch"),
            (lambda d: d.sync_schedules([every(), every()]), "appears twice"),
            (lambda d: d.sync_schedules(["tick"]), "expected Schedule"),
            (lambda d: d.enqueue_due_ticks([]), "empty batch"),
            (lambda d: d.enqueue_due_ticks(["tick", "tick"]), "appears twice"),
            (lambda d: d.pause_schedules(["tick"], "yes"), "must be a bool"),
            (lambda d: d.drop_schedules([""]), "non-empty string"),
            (lambda d: d.run_schedule(3), "non-empty string"),
        ],
    )
    def test_bad_requests_raise_invalid_request(
        self, harbor: Harbor, call: Any, match: str
    ) -> None:
        sync(harbor, every())
        before = harbor.driver.list_schedules()
        with pytest.raises(InvalidRequest, match=match):
            call(harbor.driver)
        assert harbor.driver.list_schedules() == before

    def test_a_daily_cron_runs_once_on_both_dst_days(self, harbor: Harbor) -> None:
        """Europe/Paris: 02:30 does not exist on 2030-03-31 and happens twice on 2030-10-27."""
        run: list[datetime] = []
        for day in (datetime(2030, 3, 30, 12, tzinfo=UTC), datetime(2030, 10, 26, 12, tzinfo=UTC)):
            harbor.clock.set(day)
            name = f"daily-{day.month}"
            sync(
                harbor,
                Schedule(name, EnqueueRequest("report"), cron="30 2 * * *", tz="Europe/Paris"),
            )
            for _ in range(48):  # every half hour for a day
                harbor.advance(1800)
                run.extend(ticks(harbor, name))
        assert run == [
            datetime(2030, 3, 31, 1, 0, tzinfo=UTC),  # 03:00 CEST, just after the gap
            datetime(2030, 10, 27, 0, 30, tzinfo=UTC),  # the first 02:30 (CEST)
        ]


for _name, _test in list(vars(ScheduleRules).items()):
    if _name.startswith("test_"):
        requires("schedules")(_test)


BAD_DECLARATIONS = [
    ({"cron": "61 * * * *"}, "bad cron expression"),
    ({"cron": "* * *"}, "5 fields"),
    ({"cron": "0 6 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"cron": "0 6 * * *", "every": 60}, "got both"),
    ({}, "got neither"),
    ({"every": 0}, "every must be"),
    ({"every": 1.5}, "every must be"),
    ({"every": 60, "tz": "Europe/Paris"}, "tz applies to cron"),
    ({"every": 60, "missed": "some"}, "missed must be"),
    ({"every": 60, "catch_up": 0}, "catch_up must be"),
    ({"every": 60, "jitter": -1}, "jitter must be"),
]


class ScheduleDeclarationRules:
    """A bad declaration is refused where it is written, naming what is wrong."""

    @pytest.mark.parametrize(("fields", "match"), BAD_DECLARATIONS)
    def test_a_bad_declaration_is_refused(self, fields: dict[str, Any], match: str) -> None:
        with pytest.raises(InvalidRequest, match=match):
            Schedule("s", EnqueueRequest("t"), **fields)

    def test_a_template_with_a_key_or_run_at_is_refused(self) -> None:
        with pytest.raises(InvalidRequest, match="neither run_at nor idempotency_key"):
            Schedule("s", EnqueueRequest("t", idempotency_key="k"), every=5)

    def test_a_long_name_is_refused(self) -> None:
        with pytest.raises(InvalidRequest, match="longer than 200"):
            Schedule("s" * 201, EnqueueRequest("t"), every=5)
