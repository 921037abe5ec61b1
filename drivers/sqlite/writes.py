"""The writes of one SQLite driver call, inside its ``BEGIN IMMEDIATE`` transaction.

Every per-job state change goes through :meth:`Writes.move` (or
:meth:`Writes.resolve` then :meth:`Writes.apply`), which asks the spec's
transition table for the target and applies the field effects
:mod:`taskharbor.spec.spi` lists for the event.  The workflow effects of a
finished step (release, cascade, the derived workflow state) are written here
too, so they commit or roll back with the call that caused them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    FINISHED_JOB_STATES,
    JOB,
    WORKFLOW,
    JobEvent,
    JobId,
    JobNotFound,
    JobState,
    WorkflowId,
    WorkflowState,
    dependency_reason,
    derive_workflow_state,
)
from taskharbor.spec.records import CALLBACK_CANCELS, map_ref, partial_input, step_failure

from .rows import JOB_COLUMNS, dump_json, job_record, load_json, to_micros
from .transitions import INSERT_JOB, JOBS_AFTER, JOBS_BY_ID
from .walk import FLOW_GROUP, NEW_FLOW_GROUP

_LEASE_CLEARED: Mapping[str, Any] = {
    "lease_token": None,
    "lease_expires_at": None,
    "leased_by": None,
    "cancel_requested": 0,
}
"""Columns reset when a job leaves ``running``."""


INTEGER_MAX = 2**63 - 1
"""The largest id SQLite can store."""


class Writes:
    """State changes of one call: the connection in a write transaction, and "now"."""

    def __init__(self, conn: sqlite3.Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.now_us = to_micros(now)
        self.touched: set[JobId] = set()
        """Jobs this call has changed so far."""
        self._states_before: dict[WorkflowId, WorkflowState] = {}
        """The state of each workflow this call derived, before its first change."""
        self._first_dead: dict[WorkflowId, JobId] = {}
        """The first counted step of each workflow that ended dead in this call."""
        self._marked: dict[WorkflowId, tuple[frozenset[JobId], frozenset[JobId]]] = {}
        """Each workflow's partial and tolerated steps, read once per call."""
        self._groups: dict[tuple[str, str], int] = {}
        """The flow group ids this call read or made."""

    # -- reading inside the transaction ----------------------------------------

    def rows(self, job_ids: Sequence[JobId]) -> list[sqlite3.Row]:
        """The jobs' rows in the order asked; ``JobNotFound`` names the first missing id."""
        found = self.rows_by_id(job_ids)
        for job_id in job_ids:
            if job_id not in found:
                raise JobNotFound(job_id)
        return [found[job_id] for job_id in job_ids]

    def rows_by_id(self, job_ids: Iterable[JobId]) -> dict[JobId, sqlite3.Row]:
        # An id beyond SQLite's INTEGER cannot be stored, and no job has it: not found.
        wanted = [job_id for job_id in job_ids if abs(job_id) <= INTEGER_MAX]
        return {row[0]: row for row in self.conn.execute(JOBS_BY_ID, (dump_json(wanted),))}

    def _steps(self, workflow_id: WorkflowId) -> list[sqlite3.Row]:
        return self.conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE workflow_id = ? ORDER BY id", (workflow_id,)
        ).fetchall()

    # -- inserting --------------------------------------------------------------

    def flow_group(self, task: str, flow: str) -> int:
        """The id of the flow group of ``task`` and the limits' text ``flow``, made if new
        (the lease's group walk, :mod:`.walk`, indexes a job's group by this id)."""
        if (task, flow) not in self._groups:
            row = self.conn.execute(FLOW_GROUP, (task, flow)).fetchone()
            if row is None:
                row = self.conn.execute(NEW_FLOW_GROUP, (task, flow)).fetchone()
            self._groups[task, flow] = row[0]
        return self._groups[task, flow]

    def insert(self, rows: Sequence[Sequence[object]]) -> list[sqlite3.Row]:
        """Insert jobs (values in the order of ``INSERT_COLUMNS``); their stored rows, in order.

        Each new id is above every id before it (``AUTOINCREMENT``), and no
        other writer runs inside the call's ``BEGIN IMMEDIATE``: the jobs above
        the largest id before the insert are these, in their order.
        """
        if len(rows) == 1:  # one statement instead of three
            return self.conn.execute(f"{INSERT_JOB} RETURNING {JOB_COLUMNS}", rows[0]).fetchall()
        (last,) = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()
        self.conn.executemany(INSERT_JOB, rows)
        return self.conn.execute(JOBS_AFTER, (last,)).fetchall()

    def _unsucceeded(self, job_ids: Sequence[JobId], *, partial: bool = False) -> bool:
        """Whether any of these jobs has not succeeded (``partial``: has not ended), in
        one query however many."""
        ends = FINISHED_JOB_STATES if partial else (JobState.SUCCEEDED,)
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
            "AND state NOT IN (SELECT value FROM json_each(?)))",
            (dump_json(list(job_ids)), dump_json([state.value for state in ends])),
        ).fetchone()
        return bool(row[0])

    def _marks(self, workflow_id: WorkflowId) -> tuple[frozenset[JobId], frozenset[JobId]]:
        """The workflow's partial steps and tolerated steps (both empty for most)."""
        if workflow_id not in self._marked:
            row = self.conn.execute(
                "SELECT partial, tolerated FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()
            self._marked[workflow_id] = (
                frozenset(load_json(row["partial"] or "[]")),
                frozenset(load_json(row["tolerated"] or "[]")),
            )
        return self._marked[workflow_id]

    def _is_partial(self, row: sqlite3.Row) -> bool:
        workflow_id = row["workflow_id"]
        return workflow_id is not None and row["id"] in self._marks(workflow_id)[0]

    def succeeded(self, workflow_id: WorkflowId) -> bool:
        """Whether the workflow has succeeded (its tolerated steps are requeued alone)."""
        row = self.conn.execute("SELECT state FROM workflows WHERE id = ?", (workflow_id,))
        return bool(row.fetchone()["state"] == WorkflowState.SUCCEEDED)

    # -- moving one job through the table ---------------------------------------

    def resolve(
        self, row: sqlite3.Row, event: JobEvent, facts: Mapping[str, bool] | None = None
    ) -> JobState:
        """The target of ``event`` for the job in ``row`` (``InvalidTransition`` if none)."""
        return JobState(JOB.resolve(event, row["state"], facts, subject=row["id"]))

    def apply(self, row: sqlite3.Row, target: JobState, **changes: Any) -> None:
        """Write ``target`` and the event's ``changes``, plus the effects every event
        shares: ``finished_at`` when the job finishes (a dead job cancelled keeps
        the one it died at), the cancellation reason
        (the one a running job's workflow cancel recorded, else the default),
        and the lease fields (and a recorded reason) cleared when it leaves
        ``running``."""
        if target in FINISHED_JOB_STATES and row["state"] not in FINISHED_JOB_STATES:
            changes.setdefault("finished_at", self.now_us)
        if target == JobState.CANCELLED:
            changes.setdefault("reason", row["reason"] or CANCELLED_BY_REQUEST)
        if row["state"] == JobState.RUNNING and target != JobState.RUNNING:
            changes = {**_LEASE_CLEARED, "reason": None, **changes}
        self.update(row["id"], state=target.value, **changes)

    def move(
        self,
        row: sqlite3.Row,
        event: JobEvent,
        facts: Mapping[str, bool] | None = None,
        **changes: Any,
    ) -> JobState:
        """Resolve ``event`` for the job in ``row``, apply it, return the new state."""
        target = self.resolve(row, event, facts)
        self.apply(row, target, **changes)
        return target

    def update(self, job_id: JobId, **columns: Any) -> None:
        """Set columns of one job (names come from this package, never from input)."""
        self.touched.add(job_id)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        self.conn.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?", (*columns.values(), job_id)
        )

    def request_cancel(self, job_id: JobId, reason: str | None = None) -> None:
        """A running job is only asked to stop; its worker sees it at the next heartbeat.

        ``reason`` (a workflow's cancel) is recorded now and kept when the
        cancel resolves; without it the job's reason is left as it is."""
        if reason is None:
            self.update(job_id, cancel_requested=1)
        else:
            self.update(job_id, cancel_requested=1, reason=reason)

    def requeue(self, row: sqlite3.Row) -> None:
        """Event ``requeue``: back to ``pending`` while the step still waits, else ``available``."""
        depends_on = load_json(row["depends_on"])
        partial = bool(depends_on) and self._is_partial(row)
        waits = (
            self._unsucceeded(depends_on, partial=partial) if depends_on else self._is_callback(row)
        )
        target = self.resolve(row, JobEvent.REQUEUE, {"waits_on_dependencies": waits})
        changes: dict[str, Any] = {
            "attempt": 0,
            "run_at": self.now_us,
            "cancel_requested": 0,
            "finished_at": None,
            "reason": None,
            "result": dump_json(None),
        }
        released = target != JobState.PENDING
        if row["step_args"] is not None and not (released and waits and not depends_on):
            # a released failure callback (it waits, on no step) keeps its failure
            changes["args"] = self._step_args(row, released=released)
        self.apply(row, target, **changes)

    # -- workflows ----------------------------------------------------------------

    def after_step_finished(
        self, job_id: JobId, state: JobState, workflow_id: WorkflowId | None
    ) -> None:
        """Release or cancel a finished step's dependents, then derive the workflow."""
        if workflow_id is None or state not in FINISHED_JOB_STATES:
            return
        if state == JobState.SUCCEEDED:
            self._release_dependents(job_id, workflow_id)
        else:
            self._cancel_dependents(job_id, state, workflow_id)
        counted = job_id not in self._marks(workflow_id)[1]
        self.derive_workflow(
            workflow_id, dead=job_id if state == JobState.DEAD and counted else None
        )

    def _is_callback(self, row: sqlite3.Row) -> bool:
        """Whether the job is its workflow's failure callback (it always waits)."""
        if row["workflow_id"] is None:
            return False
        found = self.conn.execute(
            "SELECT on_failure FROM workflows WHERE id = ?", (row["workflow_id"],)
        ).fetchone()
        return bool(found["on_failure"] == row["id"])

    def _release_dependents(self, job_id: JobId, workflow_id: WorkflowId) -> None:
        """Event ``release`` for each pending step whose last dependency just succeeded."""
        pending = self.conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE workflow_id = ? AND state = ? ORDER BY id",
            (workflow_id, JobState.PENDING.value),
        ).fetchall()
        partial = self._marks(workflow_id)[0]
        for step in pending:
            if job_id in load_json(step["depends_on"]) and step["id"] not in partial:
                self._release_if_ready(step)  # a partial one at the end of the call

    def _release_if_ready(self, step: sqlite3.Row) -> None:
        """Event ``release`` for a pending step that no longer waits."""
        partial = self._is_partial(step)
        if self._unsucceeded(load_json(step["depends_on"]), partial=partial):
            return
        in_future = step["run_at"] > self.now_us
        self.move(
            step,
            JobEvent.RELEASE,
            {"run_at_in_future": in_future},
            run_at=step["run_at"] if in_future else self.now_us,
            args=self._step_args(step, released=True),
        )

    def _cancel_dependents(self, job_id: JobId, state: JobState, workflow_id: WorkflowId) -> None:
        """Event ``cancel`` for every step that depends on ``job_id``, directly or not,
        up to the partial steps.

        Those steps are all ``pending``: a step leaves ``pending`` only once
        every step it depends on has succeeded (a partial one: ended).
        """
        reason = dependency_reason(job_id, state)
        partial = self._marks(workflow_id)[0]
        dependents = {job_id}
        for step in self._steps(workflow_id):  # ascending ids: a topological order
            if step["id"] not in partial and dependents.intersection(load_json(step["depends_on"])):
                dependents.add(step["id"])
                if step["state"] == JobState.PENDING:
                    self.move(step, JobEvent.CANCEL, reason=reason)

    def _step_args(self, step: sqlite3.Row, *, released: bool) -> str:
        """A step's own args, with its input put in front once it is released."""
        own = load_json(step["step_args"])
        if step["step_input"] is None or not released:
            return dump_json(own)
        depends_on = load_json(step["depends_on"])
        if self._is_partial(step):
            records = {dep: job_record(row) for dep, row in self.rows_by_id(depends_on).items()}
            return dump_json([*partial_input(load_json(step["step_input"]), records), *own])
        results = {
            dep: load_json(row["result"]) for dep, row in self.rows_by_id(depends_on).items()
        }
        return dump_json([map_ref(load_json(step["step_input"]), results), *own])

    def derive_workflow(self, workflow_id: WorkflowId, *, dead: JobId | None = None) -> None:
        """Set the workflow's state from its steps' states, through the workflow table,
        and move a pending failure callback on with it (``dead``: the step that just
        ended dead, if one did)."""
        workflow = self.conn.execute(
            "SELECT state, on_failure FROM workflows WHERE id = ?", (workflow_id,)
        ).fetchone()
        current = WorkflowState(workflow["state"])
        self._states_before.setdefault(workflow_id, current)
        if dead is not None:
            self._first_dead.setdefault(workflow_id, dead)
        tolerated = dump_json(sorted(self._marks(workflow_id)[1]))
        states = self.conn.execute(
            "SELECT DISTINCT state FROM jobs WHERE workflow_id = ? AND id IS NOT ? "
            "AND id NOT IN (SELECT value FROM json_each(?))",
            (workflow_id, workflow["on_failure"], tolerated),
        )
        target = derive_workflow_state((JobState(row["state"]) for row in states), current)
        if target == current:
            return
        WORKFLOW.event_for(current, target, subject=workflow_id)
        finished_at = None if target == WorkflowState.RUNNING else self.now_us
        self.conn.execute(
            "UPDATE workflows SET state = ?, finished_at = ? WHERE id = ?",
            (target.value, finished_at, workflow_id),
        )

    def settle_callbacks(self) -> None:
        """At the end of the call: move each pending failure callback whose workflow's
        state the call changed, by the state the workflow ends the call in; first release
        the pending partial steps of the workflows the call touched that no longer wait."""
        for workflow_id in sorted(self._states_before):
            partial = sorted(self._marks(workflow_id)[0])
            for step in self.rows(partial):
                if step["state"] == JobState.PENDING:
                    self._release_if_ready(step)
        for workflow_id, before in sorted(self._states_before.items()):
            workflow = self.conn.execute(
                "SELECT state, on_failure FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()
            state = WorkflowState(workflow["state"])
            if workflow["on_failure"] is not None and state != before:
                self._move_callback(workflow_id, workflow["on_failure"], state)
        self._states_before.clear()

    def _move_callback(
        self, workflow_id: WorkflowId, callback_id: JobId, state: WorkflowState
    ) -> None:
        """Release a pending failure callback when its workflow failed, with the first
        step dead in this call in front of its own args; cancel it when the workflow
        succeeded or was cancelled."""
        [callback] = self.rows([callback_id])
        if callback["state"] != JobState.PENDING:
            return
        if state == WorkflowState.FAILED:
            [died] = self.rows([self._first_dead[workflow_id]])
            failure = step_failure(workflow_id, job_record(died))
            in_future = callback["run_at"] > self.now_us
            self.move(
                callback,
                JobEvent.RELEASE,
                {"run_at_in_future": in_future},
                run_at=callback["run_at"] if in_future else self.now_us,
                args=dump_json([failure, *load_json(callback["step_args"])]),
            )
        elif state in CALLBACK_CANCELS:
            self.move(callback, JobEvent.CANCEL, reason=CALLBACK_CANCELS[state])
