"""Model-test inputs and invariants of flow control (:mod:`taskharbor.spec.flow`).

Limited jobs get tasks and keys of their own, each with one fixed limit, so the
invariants can state the limits plainly: never more running than the limit, per
task and per key, and a sequence job starts only when every earlier job of its
sequence is finished (dead ones only when they are skipped).  Limits that differ
between jobs of one task (a deployment that changes them) are left to the
conformance suite.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from hypothesis import strategies as st

from taskharbor.spec import FINISHED_JOB_STATES, FlowLimits, JobId, JobState, OnDead, RateLimit

from .observe import Snapshot
from .strategies import REQUESTS

TASK_LIMITS = {"limited": 2, "throttled": 3}
"""Each limited task with its concurrency limit (``throttled`` also has a rate limit)."""

THROTTLE = RateLimit(2, 5.0)
"""Two starts per five seconds, of task ``throttled``."""

KEY_LIMITS = {"acct-1": 1, "acct-2": 2}
"""Keys with a key concurrency limit."""

SEQUENCES = {"seq-block": OnDead.BLOCK, "seq-skip": OnDead.SKIP}
"""Keys whose jobs form a sequence, with what their dead jobs do."""


def _limits(task: str, key: str | None) -> FlowLimits:
    return FlowLimits(
        concurrency=TASK_LIMITS[task],
        key=key,
        key_concurrency=KEY_LIMITS.get(key or ""),
        sequence=SEQUENCES.get(key or ""),
        rate=THROTTLE if task == "throttled" else None,
    )


LIMITED_REQUESTS = st.builds(
    lambda plan, task, key: replace(plan, task=task, flow=_limits(task, key)),
    REQUESTS,
    st.sampled_from(sorted(TASK_LIMITS)),
    st.sampled_from([None, *KEY_LIMITS, *SEQUENCES]),
)
"""Plans of jobs with flow limits (for stores with the ``flow_control`` capability)."""


def flow_problems(view: Snapshot, leased: Iterable[JobId] = ()) -> list[str]:
    """Limits passed: more running jobs of a limited task or key than its limit, in
    ``view`` with the jobs of ``leased`` running too (a lease just made on it)."""
    running_ids = {job.id for job in view.jobs.values() if job.state is JobState.RUNNING}
    running = [view.jobs[job_id] for job_id in running_ids.union(leased)]
    tasks = Counter(job.task for job in running)
    keys = Counter(job.flow.key for job in running if job.flow is not None and job.flow.key)
    problems = [
        f"{tasks[task]} jobs of task {task} running, limit {limit}"
        for task, limit in TASK_LIMITS.items()
        if tasks[task] > limit
    ]
    limits = {**KEY_LIMITS, **dict.fromkeys(SEQUENCES, 1)}
    problems += [
        f"{keys[key]} jobs with key {key} running, limit {limit}"
        for key, limit in limits.items()
        if keys[key] > limit
    ]
    return problems


def sequence_problems(before: Snapshot, leased: list[JobId]) -> list[str]:
    """Sequence jobs leased while an earlier job of their sequence held them back
    (``before``: the store just before the lease)."""
    problems = []
    for job_id in leased:
        job = before.jobs[job_id]
        if job.flow is None or job.flow.sequence is None:
            continue
        for earlier in before.jobs.values():
            same = earlier.flow is not None and earlier.flow.key == job.flow.key
            if not same or earlier.id >= job_id or earlier.flow is None:
                continue
            skipped = earlier.state is JobState.DEAD and earlier.flow.sequence is OnDead.SKIP
            if earlier.state not in FINISHED_JOB_STATES or (
                earlier.state is JobState.DEAD and not skipped
            ):
                problems.append(
                    f"sequence {job.flow.key}: job {job_id} started while earlier job "
                    f"{earlier.id} was {earlier.state}"
                )
    return problems
