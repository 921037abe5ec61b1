"""The available jobs of one queue in lease order, grouped so a lease passes over
held-back jobs a group at a time.

A job without flow limits sits in the queue's own heap.  A limited job sits in
the heap of its *group* (its task and its limits: see
:data:`~taskharbor.spec.flow.GROUP_GUARDS`), and the queue keeps one *mark* per
group: a position in lease order no later than the group's first job.  Marks are
a lower bound, never an exact copy, so a job entering or leaving a group costs at
most one push: a mark found early is moved forward when it reaches the top, a
superseded one is dropped there.  The next candidate of a lease is the earlier
of the first job without limits and the first job of the group whose mark is
first.

:class:`LeaseWalk` then applies the rules that let one lease call pass over a
group without reading its jobs: a group held by a count guard is set aside for
the rest of the call; a group held only because its first job waits for its
key's sequence is visited once more, at its sequence head, if that head is one of
its available jobs; the marks of the groups set aside come back when the call
ends.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from taskharbor.spec.flow import GROUP_GUARDS, FlowLimits
from taskharbor.spec.records import JobId

from .heaps import LazyHeap
from .rows import JobRow

Order = tuple[int, datetime]
"""A job's place in lease order before its id: ``(-priority, run_at)``."""

Position = tuple[Order, JobId]
"""A job's place in lease order."""

GroupKey = tuple[str, FlowLimits]
"""A group of a queue: the task, and the limits every job of the group carries."""

_COMPACT_SLACK = 64
"""Superseded marks a queue may carry beyond its live ones before they are dropped."""


def _first(heap: LazyHeap[Order]) -> Position | None:
    """The position of the heap's first live job."""
    top = heap.peek()
    return None if top is None else (top[0], top[1])


@dataclass(slots=True)
class _Group:
    jobs: LazyHeap[Order]
    mark: Position | None = None
    """The position of the group's live mark in the queue (None while set aside)."""


@dataclass(slots=True)
class ReadyQueue:
    """One queue's available jobs: those without limits, and the groups of the others."""

    is_current: Callable[[JobId, int], bool]
    unlimited: LazyHeap[Order] = field(init=False)
    groups: dict[GroupKey, _Group] = field(default_factory=dict)
    marks: list[tuple[Position, GroupKey]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.unlimited = LazyHeap(self.is_current)

    def place(self, row: JobRow, seq: int) -> LazyHeap[Order]:
        """Index the available ``row``; returns the heap it now sits in."""
        order = (-row.priority, row.run_at)
        if row.flow is None:
            self.unlimited.push(order, row.id, seq)
            return self.unlimited
        key = (row.task, row.flow)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(LazyHeap(self.is_current))
        group.jobs.push(order, row.id, seq)
        position = (order, row.id)
        if group.mark is None or position < group.mark:
            self._mark(key, group, position)
        return group.jobs

    def first(self) -> tuple[Position, GroupKey | None] | None:
        """The queue's next candidate: the earlier of the first job without limits and
        the first job of the first marked group (with that group's key)."""
        plain = _first(self.unlimited)
        marked = self._first_marked()
        if marked is not None and (plain is None or marked[0] < plain):
            return marked
        return None if plain is None else (plain, None)

    def set_aside(self, key: GroupKey) -> None:
        """Pass over the group until :meth:`restore` (its mark becomes stale)."""
        self.groups[key].mark = None

    def restore(self, key: GroupKey) -> None:
        """Mark the group again at its first job, if it still has one."""
        group = self.groups.get(key)
        if group is None or group.mark is not None:
            return
        position = _first(group.jobs)
        if position is None:
            del self.groups[key]
        else:
            self._mark(key, group, position)

    def _first_marked(self) -> tuple[Position, GroupKey] | None:
        """The first live mark, each moved to its group's first job on the way."""
        marks = self.marks
        while marks:
            position, key = marks[0]
            group = self.groups.get(key)
            if group is None or group.mark != position:
                heapq.heappop(marks)  # superseded, or its group set aside or gone
                continue
            first = _first(group.jobs)
            if first == position:
                return position, key
            heapq.heappop(marks)  # early: the job it marked has left the group
            if first is None:
                del self.groups[key]
            else:
                self._mark(key, group, first)
        return None

    def _mark(self, key: GroupKey, group: _Group, position: Position) -> None:
        group.mark = position
        heapq.heappush(self.marks, (position, key))
        if len(self.marks) > 2 * len(self.groups) + _COMPACT_SLACK:
            self.marks = [(p, k) for p, k in self.marks if self._is_mark(p, k)]
            heapq.heapify(self.marks)

    def _is_mark(self, position: Position, key: GroupKey) -> bool:
        group = self.groups.get(key)
        return group is not None and group.mark == position


_Head = tuple[Position, int, LazyHeap[Order]]
"""A sequence head to visit: its position, its placement's sequence, its group's heap."""


class LeaseWalk:
    """The candidates of one lease call over some queues, in lease order.

    The caller asks :meth:`next` for a candidate and, when it does not take it,
    says why with :meth:`held`; :meth:`end` puts back what the call set aside.
    """

    def __init__(
        self,
        queues: list[ReadyQueue],
        placement: Callable[[JobId], tuple[int, LazyHeap[Order] | None] | None],
    ) -> None:
        self._queues = queues
        self._placement = placement
        self._set_aside: list[tuple[ReadyQueue, GroupKey]] = []
        self._heads: list[_Head] = []
        self._current: tuple[ReadyQueue, GroupKey | None] | None = None

    def next(self) -> JobId | None:
        """The next candidate, or None when no queue has one left."""
        best: tuple[Position, ReadyQueue, GroupKey | None] | None = None
        for queue in self._queues:
            first = queue.first()
            if first is not None and (best is None or first[0] < best[0]):
                best = (first[0], queue, first[1])
        while self._heads and self._placement(self._heads[0][0][1]) != self._heads[0][1:]:
            heapq.heappop(self._heads)  # no longer an available job of its group
        if self._heads and (best is None or self._heads[0][0] < best[0]):
            self._current = None  # its group is set aside already
            return heapq.heappop(self._heads)[0][1]
        if best is None:
            return None
        position, queue, key = best
        self._current = (queue, key)
        return position[1]

    def held(self, facts: Mapping[str, bool], head: JobRow | None) -> None:
        """The candidate :meth:`next` gave was held back by ``facts``; ``head`` is the
        sequence head of its key when it has a sequence."""
        if self._current is None:
            return  # a sequence head visited on its own
        queue, key = self._current
        if key is None:
            raise RuntimeError("a job without flow limits was held back by its limits")
        jobs = queue.groups[key].jobs
        queue.set_aside(key)
        self._set_aside.append((queue, key))
        if head is None or any(facts[guard] for guard in GROUP_GUARDS):
            return
        placement = self._placement(head.id)
        if placement is not None and placement[1] is jobs:
            position = ((-head.priority, head.run_at), head.id)
            heapq.heappush(self._heads, (position, placement[0], jobs))

    def end(self) -> None:
        """Mark again every group the call set aside."""
        for queue, key in self._set_aside:
            queue.restore(key)
        self._set_aside.clear()
