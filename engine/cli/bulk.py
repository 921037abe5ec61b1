"""Bulk operator actions: many jobs, in batches, with a progress bar when it takes long.

Each batch is one atomic driver call.  When a batch is refused (a job changed
state meanwhile), the batches before it stay applied and the error says how
far the command got, so the operator can look and run it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from taskharbor.spec import JobId, JobRecord, TaskHarborError

BATCH_SIZE = 500
"""Jobs per driver call: large enough for few round trips, small enough for short locks."""


def in_batches(
    ids: Sequence[JobId],
    operation: Callable[[Sequence[JobId]], list[JobRecord]],
    verb: str,
    *,
    batch_size: int = BATCH_SIZE,
) -> list[JobRecord]:
    """Apply ``operation`` to ``ids`` batch by batch; the records it returned, in order.

    A progress bar on stderr (when it is a terminal) shows when there is more
    than one batch.
    """
    done: list[JobRecord] = []
    applied = 0
    progress = Progress(
        TextColumn(f"{verb} jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=len(ids) <= batch_size,
    )
    with progress:
        bar = progress.add_task(verb, total=len(ids))
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            try:
                done.extend(operation(batch))
            except TaskHarborError as exc:
                if not applied:
                    raise
                raise click.ClickException(
                    f"{verb} {applied} of {len(ids)} jobs, then stopped: {exc}"
                ) from None
            applied += len(batch)
            progress.advance(bar, len(batch))
    return done
