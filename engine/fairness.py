"""How a worker serving several queues shares its free slots between them.

One lease over all of a worker's queues takes jobs in the store's lease order
(priority, then ``run_at``, then id) across the queues, so a queue with a
large backlog of older jobs would take every slot until it is drained, and
the other queues would starve.  A worker therefore splits each batch between
its queues by *smooth weighted round robin* (the algorithm nginx uses for
upstream weights): each queue gains its weight in credit at every pick, the
queue with the most credit is picked (the first listed on a tie) and pays
the total weight back.  With weights 3 and 1 the picks go ``a a b a`` and then
repeat, spread out rather than bunched, and every queue is picked at least
once in every run of ``total weight`` picks, whatever the backlogs.

The split is a plan; the leases are the store's.  A queue that has fewer
ready jobs than its share leaves its slots to the others: the worker leases
them over all its queues at once, in the store's order, so a slot never idles
while any of the queues has a job ready.  The rotation is a pure function of
the weights and the slots asked for, so tests check it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from taskharbor.spec import InvalidRequest, check_name

MAX_WEIGHT = 1000
"""The largest weight a queue may have (a share of one in a thousand is enough)."""


def queue_weights(queues: Mapping[str, object] | Sequence[str]) -> dict[str, int]:
    """The weight of each queue, in the order given: 1 each for a list of names, or
    the given ints (1 .. :data:`MAX_WEIGHT`) for a mapping of name to weight."""
    if isinstance(queues, Mapping):
        weights: dict[str, int] = {}
        for name, weight in queues.items():
            check_name(name, "queue name")
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise InvalidRequest(f"the weight of queue {name!r} must be an int, not {weight!r}")
            if not 1 <= weight <= MAX_WEIGHT:
                raise InvalidRequest(
                    f"the weight of queue {name!r} must be from 1 to {MAX_WEIGHT}, not {weight}"
                )
            weights[name] = weight
        return weights
    for name in queues:
        check_name(name, "queue name")
    return dict.fromkeys(queues, 1)


class Rotation:
    """Smooth weighted round robin over queues; :meth:`split` plans one batch."""

    def __init__(self, weights: Mapping[str, int]) -> None:
        if not weights:
            raise InvalidRequest("a rotation needs at least one queue")
        self.weights = dict(weights)
        self._total = sum(self.weights.values())
        self._credit = dict.fromkeys(self.weights, 0)

    def pick(self) -> str:
        """The next queue in the rotation."""
        for name, weight in self.weights.items():
            self._credit[name] += weight
        chosen = max(self._credit, key=self._credit.__getitem__)  # first listed on a tie
        self._credit[chosen] -= self._total
        return chosen

    def split(self, slots: int) -> dict[str, int]:
        """How many of ``slots`` each queue is offered, by ``slots`` picks; the queues in
        the order of their first pick (the queue whose turn it is comes first)."""
        shares: dict[str, int] = {}
        for _ in range(slots):
            chosen = self.pick()
            shares[chosen] = shares.get(chosen, 0) + 1
        return shares
