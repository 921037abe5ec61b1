"""The Redis driver's paused queues (capability ``queue_pause``).

The rules are :mod:`taskharbor.spec.queues`'.  A pause is a field of the hash
``P paused`` (queue name -> the instant it was paused), written with
``HSETNX`` so pausing a paused queue keeps its instant; a resume deletes the
field and publishes the queue's name on the wake channel, so a worker waiting
on it leases its jobs at once.  ``lease`` and ``ready`` (the check of
``wait_for_jobs``) leave out the queues they find paused in the same script
run (:func:`H.unpaused` in the library).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from taskharbor.spec.queues import QueueRecord, check_paused, queue_names

from .rows import decode_time

QUEUES_LUA = r"""
-- Arguments: '1' to pause or '0' to resume, then the queue names; returns each
-- queue's name and paused_at ('' when not paused), in order.
CMD.pause_queues = function(a)
  local key, out = P .. 'paused', {}
  for i = 2, #a do
    local q = a[i]
    if a[1] == '1' then
      redis.call('HSETNX', key, q, NOW)
      out[#out + 1] = {q, redis.call('HGET', key, q)}
    else
      if redis.call('HDEL', key, q) == 1 then WAKE[q] = true end
      out[#out + 1] = {q, ''}
    end
  end
  return out
end

CMD.paused_queues = function(a)
  return redis.call('HGETALL', P .. 'paused')
end
"""


def _record(name: str, paused_at: str) -> QueueRecord:
    return QueueRecord(name, decode_time(paused_at) if paused_at else None)


class RedisQueues:
    """The ``queue_pause`` calls of :class:`~taskharbor.drivers.redis.RedisDriver`."""

    _call: Callable[..., Any]

    def pause_queues(self, queues: Sequence[str], paused: bool) -> list[QueueRecord]:
        names = queue_names(queues, "pause_queues")
        flag = "1" if check_paused(paused, "pause_queues") else "0"
        return [_record(name, at) for name, at in self._call("pause_queues", flag, *names)]

    def paused_queues(self) -> list[QueueRecord]:
        flat = self._call("paused_queues")
        found = zip(flat[::2], flat[1::2], strict=True)
        return [_record(name, at) for name, at in sorted(found)]
