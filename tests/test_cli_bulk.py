"""Bulk commands work in batches, say how far they got when a batch is refused, and
show a progress bar on a terminal when there is more than one batch."""

from __future__ import annotations

from collections.abc import Sequence

import click
import pytest
from test_cli_support import CliStore, cli_store

from taskharbor.cli.bulk import BATCH_SIZE, in_batches
from taskharbor.spec import InvalidTransition, JobId, JobRecord, JobState

__all__ = ["cli_store"]


class Recorder:
    """An operation that records its batches and refuses the job ``refuse``."""

    def __init__(self, refuse: JobId | None = None) -> None:
        self.batches: list[list[JobId]] = []
        self.refuse = refuse

    def __call__(self, ids: Sequence[JobId]) -> list[JobRecord]:
        if self.refuse in ids:
            raise InvalidTransition("job", self.refuse, "requeue", "available", ["dead"])
        self.batches.append(list(ids))
        return []


def test_batches_cover_every_id_in_order() -> None:
    recorder = Recorder()
    in_batches([1, 2, 3, 4, 5], recorder, "requeued", batch_size=2)
    assert recorder.batches == [[1, 2], [3, 4], [5]]


def test_a_refused_first_batch_is_the_driver_s_own_error() -> None:
    with pytest.raises(InvalidTransition):
        in_batches([1, 2, 3], Recorder(refuse=1), "requeued", batch_size=2)


def test_a_refused_later_batch_says_how_far_it_got() -> None:
    recorder = Recorder(refuse=3)
    with pytest.raises(click.ClickException) as raised:
        in_batches([1, 2, 3, 4, 5], recorder, "requeued", batch_size=2)
    assert recorder.batches == [[1, 2]]
    message = raised.value.format_message()
    assert message.startswith("requeued 2 of 5 jobs, then stopped: job 3 is available")


@pytest.mark.parametrize(("count", "shown"), [(5, True), (2, False)])
def test_a_progress_bar_on_a_terminal_when_there_are_several_batches(
    count: int, shown: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    in_batches(list(range(1, count + 1)), Recorder(), "requeued", batch_size=2)
    assert ("requeued jobs" in capsys.readouterr().err) is shown


def test_dlq_requeue_all_beyond_one_batch(cli_store: CliStore) -> None:
    dead = cli_store.dead(count=BATCH_SIZE + 1)
    shape = cli_store.json("dlq", "requeue", "--all")
    assert [job["id"] for job in shape["jobs"]] == [job.id for job in dead]
    states = {job.state for job in cli_store.driver.get([job.id for job in dead])}
    assert states == {JobState.AVAILABLE}
