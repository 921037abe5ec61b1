"""The lease's group walk in the SQLite store: it passes over held-back *groups*, not jobs.

A limited job's group is its queue, task and flow limits as stored (the ``flow``
text, key included); a job keeps the id of its task and limits (``flow_group``, a
row of ``flow_groups``), so the indexes hold a number, not the text.  Within one
lease call the members of a group share every guard's fact but ``sequence_waits``
(:mod:`taskharbor.drivers.flow_gate`), so the walk looks at one member of a group
at a time, in lease order:

1. a member held by a guard that counts (:attr:`Verdict.HELD`) holds the whole
   group for the rest of the call: the walk drops the group;
2. a member held by its key's sequence alone (:attr:`Verdict.WAITS_FOR_HEAD`)
   leaves only the key's head to take: the group's next candidate is the head
   at the head's own place in lease order, if the head is an available member of
   the group not yet taken; otherwise the walk drops the group;
3. a member taken is followed by the group's next member in lease order.

The walk merges, in lease order, the available jobs without limits, each
group's first available job (``flow_tops``, kept exact by triggers: SQLite has
one writer) and each group's next candidate found by rules 2 and 3.  A lease
so reads O(jobs taken + groups held ahead), whatever the number of held jobs;
the jobs it takes are those a walk of every available job would take.
"""

from __future__ import annotations

import heapq
import sqlite3

from taskharbor.spec import JobState
from taskharbor.spec.flow import flow_from_text
from taskharbor.spec.records import JobId

from ..flow_gate import FlowGate, Verdict
from .transitions import LEASE_ORDER, LIMITED_ROWS, UNLIMITED_ROWS, literal, ready_jobs_query

_OLD_GROUP = "queue = OLD.queue AND flow_group = OLD.flow_group"
"""The group of the trigger's old row."""

_NEW_IS_LIMITED = f"NEW.state = {literal(JobState.AVAILABLE)} AND NEW.flow_group IS NOT NULL"
"""The trigger's new row is an available limited job."""

_OLD_WAS_LIMITED = f"OLD.state = {literal(JobState.AVAILABLE)} AND OLD.flow_group IS NOT NULL"
"""The trigger's old row was an available limited job."""

LEAVES = (
    f"DELETE FROM flow_tops WHERE {_OLD_GROUP} AND id = OLD.id; "
    "INSERT INTO flow_tops (queue, flow_group, priority, run_at, id) "
    "SELECT queue, flow_group, priority, run_at, id FROM jobs WHERE id = "
    f"(SELECT id FROM jobs WHERE {LIMITED_ROWS} AND {_OLD_GROUP} ORDER BY {LEASE_ORDER} LIMIT 1) "
    f"AND NOT EXISTS (SELECT 1 FROM flow_tops WHERE {_OLD_GROUP});"
)
"""The trigger steps for a row (``OLD``) that left its place: if it was its group's top,
the group's first available job becomes the top (one probe of ``jobs_flow_group``),
if any is left.  (Only an available job is a top, so the delete needs no other test;
the new top is looked up by id, so the check that the group has none is made once.)"""

JOINS = (
    "INSERT INTO flow_tops (queue, flow_group, priority, run_at, id) "
    f"SELECT NEW.queue, NEW.flow_group, NEW.priority, NEW.run_at, NEW.id WHERE {_NEW_IS_LIMITED} "
    "ON CONFLICT (queue, flow_group) DO UPDATE SET "
    "priority = excluded.priority, run_at = excluded.run_at, id = excluded.id "
    "WHERE excluded.priority > flow_tops.priority OR (excluded.priority = flow_tops.priority "
    "AND (excluded.run_at < flow_tops.run_at OR (excluded.run_at = flow_tops.run_at "
    "AND excluded.id < flow_tops.id)));"
)
"""The trigger step for a row (``NEW``) that is now an available limited job: it is its
group's top unless the top comes before it in lease order."""

GROUP_TOPS = (
    "SELECT queue, flow_group, priority, run_at, id FROM ("
    "SELECT queue, flow_group, priority, run_at, id, row_number() OVER "
    f"(PARTITION BY queue, flow_group ORDER BY {LEASE_ORDER}) AS n FROM jobs "
    f"WHERE {LIMITED_ROWS}) WHERE n = 1"
)
"""Each group's top computed from the jobs (one pass over the available limited
ones): the migration fills ``flow_tops`` with it, and tests compare it with it."""

_MOVES = "UPDATE OF state, queue, flow_group, priority, run_at"
"""Every column whose change can move a row into, out of or within a group."""

MIGRATION = (
    # Each task and flow limits' text met, by id, and each job's (NULL without limits).
    "CREATE TABLE flow_groups (id INTEGER PRIMARY KEY, task TEXT NOT NULL, flow TEXT NOT NULL, "
    "UNIQUE (task, flow))",
    "ALTER TABLE jobs ADD COLUMN flow_group INTEGER REFERENCES flow_groups (id)",
    "INSERT INTO flow_groups (task, flow) "
    "SELECT DISTINCT task, flow FROM jobs WHERE flow IS NOT NULL ORDER BY task, flow",
    "UPDATE jobs SET flow_group = (SELECT g.id FROM flow_groups AS g "
    "WHERE g.task = jobs.task AND g.flow = jobs.flow) WHERE flow IS NOT NULL",
    # Each available row is in one lease index: without limits by queue, with limits
    # by queue and group (jobs_lease held both, so a walk to the first job admitted
    # read every held job before it).
    "DROP INDEX jobs_lease",
    f"CREATE INDEX jobs_lease_unlimited ON jobs (queue, {LEASE_ORDER}) WHERE {UNLIMITED_ROWS}",
    f"CREATE INDEX jobs_flow_group ON jobs (queue, flow_group, {LEASE_ORDER}) WHERE {LIMITED_ROWS}",
    # Each group's first available job in lease order (its top), one row a group.
    "CREATE TABLE flow_tops (queue TEXT NOT NULL, flow_group INTEGER NOT NULL, "
    "priority INTEGER NOT NULL, run_at INTEGER NOT NULL, id INTEGER NOT NULL, "
    "PRIMARY KEY (queue, flow_group)) WITHOUT ROWID",
    f"CREATE INDEX flow_tops_lease ON flow_tops (queue, {LEASE_ORDER})",
    f"INSERT INTO flow_tops (queue, flow_group, priority, run_at, id) {GROUP_TOPS}",
    # The triggers keep flow_tops exact through every write of every path.  One trigger
    # per event: a trigger that fires costs each row written a few microseconds, even
    # when its WHEN is false (a lease or a completion without limits pays one, not two).
    f"CREATE TRIGGER flow_tops_inserted AFTER INSERT ON jobs "
    f"WHEN {_NEW_IS_LIMITED} BEGIN {JOINS} END",
    f"CREATE TRIGGER flow_tops_moved AFTER {_MOVES} ON jobs "
    f"WHEN {_OLD_WAS_LIMITED} OR {_NEW_IS_LIMITED} BEGIN {LEAVES} {JOINS} END",
    f"CREATE TRIGGER flow_tops_deleted AFTER DELETE ON jobs "
    f"WHEN {_OLD_WAS_LIMITED} BEGIN {LEAVES} END",
)
"""The group walk's schema: the two lease indexes, the groups' tops and their triggers."""

_IN_GROUP = f"{LIMITED_ROWS} AND queue = :queue AND flow_group = :group"

GROUP_AFTER = (
    " UNION ALL ".join(
        f"SELECT id, priority, run_at FROM jobs WHERE {_IN_GROUP} AND {after}"
        for after in (
            "priority = :priority AND run_at = :run_at AND id > :id",
            "priority = :priority AND run_at > :run_at",
            "priority < :priority",
        )
    )
    + f" ORDER BY {LEASE_ORDER} LIMIT 1"
)
"""The group's next available job after the position ``(:priority, :run_at, :id)``:
three probes of ``jobs_flow_group`` merged (one range on the index's columns, as
a row-value comparison would be, is not a search: it reads every job of equal
``run_at`` before the position)."""

GROUP_MEMBER = f"SELECT priority, run_at FROM jobs WHERE id = :id AND {_IN_GROUP}"
"""The position of job ``:id`` if it is an available job of the group."""

FLOW_GROUP = "SELECT id FROM flow_groups WHERE task = ? AND flow = ?"
"""The id of the flow group of a task and a limits' text."""

NEW_FLOW_GROUP = "INSERT INTO flow_groups (task, flow) VALUES (?, ?) RETURNING id"
"""A new flow group, returning its id."""

_Candidate = tuple[int, int, JobId, str, str, str, int]
"""A group's next candidate: (-priority, run_at, id, task, flow, queue, group)."""


def walk(
    conn: sqlite3.Connection, gate: FlowGate, queues: dict[str, str], limit: int
) -> list[JobId]:
    """The ids to lease from ``queues`` (the ``:q0, :q1, ...`` parameters), at most
    ``limit``, in lease order, as the gate admits them (see the module's docstring)."""
    chosen: list[JobId] = []
    taken: set[JobId] = set()
    later: list[_Candidate] = []
    stream = conn.execute(ready_jobs_query(len(queues)), queues)
    try:
        row = stream.fetchone()
        while len(chosen) < limit:
            if later and (row is None or later[0][:3] < (-row[1], row[2], row[0])):
                minus_priority, run_at, job_id, task, flow, queue, group_id = heapq.heappop(later)
                priority = -minus_priority
            elif row is not None:
                job_id, priority, run_at, task, flow, queue, group_id = row
                row = stream.fetchone()
            else:
                break
            if flow is None:
                gate.takes_unlimited(task)
                chosen.append(job_id)
                continue
            group = {"queue": queue, "group": group_id}
            limits = flow_from_text(flow)
            verdict = gate.decide(job_id, task, limits)
            if verdict is Verdict.TAKEN:
                chosen.append(job_id)
                taken.add(job_id)
                found = None
                if gate.takes_more(task, limits):
                    position = {"priority": priority, "run_at": run_at, "id": job_id}
                    found = conn.execute(GROUP_AFTER, {**group, **position}).fetchone()
            elif verdict is Verdict.WAITS_FOR_HEAD and limits.key is not None:
                head = gate.head(limits.key)
                found = None
                if head is not None and head not in taken:
                    place = conn.execute(GROUP_MEMBER, {**group, "id": head}).fetchone()
                    found = None if place is None else (head, *place)
            else:
                found = None
            if found is not None:
                next_id, next_priority, next_run_at = found
                candidate = (-next_priority, next_run_at, next_id, task, flow, queue, group_id)
                heapq.heappush(later, candidate)
    finally:
        stream.close()
    return chosen
