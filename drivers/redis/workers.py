"""The Redis driver's workers registry (capability ``workers``).

The rules are :mod:`taskharbor.spec.workers`'.  Each worker is a hash ``P wk:<id>``
(its registration as given, ``started_at``, ``last_seen_at``, and ``forget_at``:
the instant it is forgotten), its id in the sorted set ``P workers`` scored by
``forget_at``, so a call forgets the long unseen by reading one range of it
(:func:`H.forget_workers`).  The durations a worker's ttl gives are computed here
with the spec's arithmetic (``forget_us``: microseconds until it is forgotten),
and whether a worker is gone is decided in Python with
:func:`~taskharbor.spec.workers.is_gone` on the call's now, so every store agrees
to the microsecond.  A lease ``heartbeat`` marks the holders of the leases it
extends seen in its own script run (:func:`H.seen` in the library's heartbeat).
A worker's running jobs are read from the index of running jobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from taskharbor.spec.workers import (
    FORGET_AFTER_TTLS,
    WorkerInfo,
    WorkerRecord,
    check_worker_ids,
    check_workers,
    is_gone,
    ordered,
)

from .rows import as_dict, decode_time, micros

WORKERS_LUA = r"""
-- Mark worker ``id`` seen now, if it is stored; whether it is.
function H.seen(id)
  local key = P .. 'wk:' .. id
  local forget_us = redis.call('HGET', key, 'forget_us')
  if not forget_us then return false end
  local forget_at = H.t_add(NOW, forget_us)
  redis.call('HSET', key, 'last_seen_at', NOW, 'forget_at', forget_at)
  redis.call('ZADD', P .. 'workers', forget_at, id)
  return true
end

function H.delete_worker(id)
  redis.call('DEL', P .. 'wk:' .. id)
  redis.call('ZREM', P .. 'workers', id)
end

-- Delete the workers unseen for twice their ttl (the exact instant is the hash's
-- ``forget_at``; the score, a double, only narrows the range).
function H.forget_workers()
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'workers', '-inf', NOW)) do
    if redis.call('HGET', P .. 'wk:' .. id, 'forget_at') <= NOW then H.delete_worker(id) end
  end
end

-- The call's now, then for each worker of ``ids`` (every stored one when nil) its
-- fields and the ids of the running jobs it holds, ascending.
function H.worker_records(ids)
  local held = {}
  for _, job in ipairs(redis.call('ZRANGE', P .. 'st:' .. S.running, 0, -1)) do
    local by = redis.call('HGET', P .. 'j:' .. job, 'leased_by')
    if by then
      held[by] = held[by] or {}
      table.insert(held[by], job)
    end
  end
  local out = {NOW}
  for _, id in ipairs(ids or redis.call('ZRANGE', P .. 'workers', 0, -1)) do
    out[#out + 1] = {redis.call('HGETALL', P .. 'wk:' .. id), held[id] or {}}
  end
  return out
end

-- Per worker: id, host, pid, queues, concurrency, version, ttl, forget_us.
CMD.register_workers = function(a)
  H.forget_workers()
  local ids = {}
  for i = 1, #a, 8 do
    local id = a[i]
    local forget_at = H.t_add(NOW, a[i + 7])
    redis.call('HSET', P .. 'wk:' .. id, 'id', id, 'host', a[i + 1], 'pid', a[i + 2],
      'queues', a[i + 3], 'concurrency', a[i + 4], 'version', a[i + 5], 'ttl', a[i + 6],
      'forget_us', a[i + 7], 'started_at', NOW, 'last_seen_at', NOW, 'forget_at', forget_at)
    redis.call('ZADD', P .. 'workers', forget_at, id)
    ids[#ids + 1] = id
  end
  return H.worker_records(ids)
end

CMD.heartbeat_workers = function(a)
  H.forget_workers()
  local unknown = {}
  for _, id in ipairs(a) do
    if not H.seen(id) then unknown[#unknown + 1] = id end
  end
  return unknown
end

CMD.deregister_workers = function(a)
  H.forget_workers()
  for _, id in ipairs(a) do H.delete_worker(id) end
  return 1
end

CMD.list_workers = function(a)
  return H.worker_records(nil)
end
"""


def _registration(info: WorkerInfo) -> list[str]:
    """The script arguments of one worker (``register_workers``)."""
    return [
        info.id,
        info.host,
        str(info.pid),
        json.dumps(list(info.queues)),
        str(info.concurrency),
        info.version,
        repr(float(info.ttl_seconds)),
        str(micros(FORGET_AFTER_TTLS * info.ttl_seconds)),
    ]


def _records(reply: list[Any]) -> list[WorkerRecord]:
    """The workers a script run read, as of its now (``H.worker_records``)."""
    now, *rows = reply
    moment = decode_time(now)
    records = []
    for flat, running in rows:
        f = as_dict(flat)
        last_seen_at = decode_time(f["last_seen_at"])
        ttl = float(f["ttl"])
        records.append(
            WorkerRecord(
                id=f["id"],
                host=f["host"],
                pid=int(f["pid"]),
                queues=tuple(json.loads(f["queues"])),
                concurrency=int(f["concurrency"]),
                version=f["version"],
                ttl_seconds=ttl,
                started_at=decode_time(f["started_at"]),
                last_seen_at=last_seen_at,
                running=tuple(int(job_id) for job_id in running),
                gone=is_gone(last_seen_at, ttl, moment),
            )
        )
    return records


class RedisWorkers:
    """The ``workers`` calls of :class:`~taskharbor.drivers.redis.RedisDriver`."""

    _call: Callable[..., Any]

    def register_workers(self, workers: Sequence[WorkerInfo]) -> list[WorkerRecord]:
        infos = check_workers(workers)
        args = [field for info in infos for field in _registration(info)]
        return _records(self._call("register_workers", *args))

    def heartbeat_workers(self, worker_ids: Sequence[str]) -> list[str]:
        ids = check_worker_ids(worker_ids, "heartbeat_workers")
        return list(self._call("heartbeat_workers", *ids))

    def deregister_workers(self, worker_ids: Sequence[str]) -> None:
        self._call("deregister_workers", *check_worker_ids(worker_ids, "deregister_workers"))

    def list_workers(self) -> list[WorkerRecord]:
        return ordered(_records(self._call("list_workers")))
