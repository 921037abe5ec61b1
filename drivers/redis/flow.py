"""Flow control in the Redis store: each job's limits, the counts the guards read, and
the walk of a lease past held-back jobs.

A job keeps its limits twice in its hash: ``flow`` (the spec's text, read back
into ``JobRecord.flow``) and one field per limit for the script (``flow_key``,
``flow_concurrency``, ``flow_key_concurrency``, ``flow_sequence``,
``flow_rate``, ``flow_window`` in microseconds, ``flow_bucket``); a job
without limits has none of them.  The guards of ``lease``
(:mod:`taskharbor.spec.flow`) are Lua predicates of the compiled table
(:mod:`.transitions`), each one lookup of a structure kept in step with every
state change by the library's ``H.index`` and ``H.unindex`` (so complete,
fail, snooze, cancel, rescue, requeue and prune all keep it right, inside the
call that moves the job):

====================== ============================================================
``P run:task``         hash: task -> how many of its jobs are running (every job)
``P run:key``          hash: key -> how many running jobs carry it (gone at 0)
``P seq:<key>``        sorted set: the jobs holding the key's sequence, by id
                       (unfinished sequence jobs, and dead ones that block)
``P starts:<bucket>``  sorted set (lexical, score 0) of a rate bucket's starts,
                       ``<time>:<lease token>``; starts older than a day are trimmed
====================== ============================================================

A lease is one script run, so no other lease can take a slot between a count
and the lease that uses it.  Held-back jobs stay in their queue's ready set:
the lease walks the ready sets in lease order (merging the queues, reading
each in growing chunks) and passes over a held-back job to the next, as far as
it takes to fill the batch, as every store does.  A bound on that walk would
starve a leasable job behind the bound: a sequence's head retried (so later in
lease order) behind more of its followers than the bound would never run, nor
would they.  The walk's cost is one read of each held-back job it passes (a
guard's verdict is remembered per task, key and bucket for the rest of the
call), and the script holds the server meanwhile (docs/redis.md).
"""

from __future__ import annotations

from typing import Final

from taskharbor.spec.flow import MAX_RATE_WINDOW_SECONDS, OnDead

from .rows import FLOW_FIELDS, micros

GUARDS_LUA: Final = {
    "task_at_limit": "F.task_at_limit(j)",
    "key_at_limit": "F.key_at_limit(j)",
    "sequence_waits": "F.sequence_waits(j)",
    "rate_exhausted": "F.rate_exhausted(j)",
}
"""The flow guards of ``lease`` as Lua predicates on the stored job ``j``."""


FLOW_LUA: Final = (
    f"""
local FLOW_FIELDS = {{{", ".join(f"'{name}'" for name in FLOW_FIELDS)}}}
local FORGET_STARTS_US = {micros(MAX_RATE_WINDOW_SECONDS)}
local DEAD_BLOCKS = '{OnDead.BLOCK.value}'
"""
    + r"""
-- A new job's flow fields from the request at ``a[b + 1]`` on (empty: no such limit).
function F.fields(j, a, b)
  for i, name in ipairs(FLOW_FIELDS) do
    if a[b + i] ~= '' then j[name] = a[b + i] end
  end
end

-- Whether job ``j`` in state ``s`` holds back the later jobs of its key's sequence.
function F.holds(j, s)
  if not j.flow_sequence then return false end
  if s == S.dead then return j.flow_sequence == DEAD_BLOCKS end
  return not FINISHED[s]
end

-- ``j`` is now indexed in state ``s`` (H.index) / no longer is (H.unindex).
function F.enter(j, s)
  if s == S.running then
    redis.call('HINCRBY', P .. 'run:task', j.task, 1)
    if j.flow_key then redis.call('HINCRBY', P .. 'run:key', j.flow_key, 1) end
  end
  if F.holds(j, s) then redis.call('ZADD', P .. 'seq:' .. j.flow_key, j.id, j.id) end
end

function F.leave(j, s)
  if s == S.running then
    redis.call('HINCRBY', P .. 'run:task', j.task, -1)
    if j.flow_key and redis.call('HINCRBY', P .. 'run:key', j.flow_key, -1) <= 0 then
      redis.call('HDEL', P .. 'run:key', j.flow_key)
    end
  end
  if F.holds(j, s) then redis.call('ZREM', P .. 'seq:' .. j.flow_key, j.id) end
end

-- The guards that held in this lease call (a script run is one call), by what they
-- read and the limit: within one lease they keep holding (it only adds running jobs
-- and starts, and a sequence's head stays: leased, it still holds), so a backlog of
-- one key costs one lookup.
local HELD = {}

-- Whether the count in hash ``counts`` of ``name`` is at ``limit`` (``memo``: its verdict).
local function at_limit(memo, counts, name, limit)
  if HELD[memo] then return true end
  local running = tonumber(redis.call('HGET', P .. counts, name) or '0')
  if running < tonumber(limit) then return false end
  HELD[memo] = true
  return true
end

function F.task_at_limit(j)
  if not j.flow_concurrency then return false end
  local memo = 't\0' .. j.task .. '\0' .. j.flow_concurrency
  return at_limit(memo, 'run:task', j.task, j.flow_concurrency)
end

function F.key_at_limit(j)
  if not j.flow_key_concurrency then return false end
  local memo = 'k\0' .. j.flow_key .. '\0' .. j.flow_key_concurrency
  return at_limit(memo, 'run:key', j.flow_key, j.flow_key_concurrency)
end

function F.sequence_waits(j)
  if not j.flow_sequence then return false end
  local head = HELD['s\0' .. j.flow_key]
  if not head then
    head = redis.call('ZRANGE', P .. 'seq:' .. j.flow_key, 0, 0)[1] or ''
    HELD['s\0' .. j.flow_key] = head
  end
  return head ~= j.id
end

-- A start counts while now < started_at + window: started_at >= now - window + 1 us.
function F.rate_exhausted(j)
  if not j.flow_rate then return false end
  local memo = 'r\0' .. j.flow_bucket .. '\0' .. j.flow_window .. '\0' .. j.flow_rate
  if HELD[memo] then return true end
  local since = '[' .. H.t_add(NOW, 1 - tonumber(j.flow_window))
  local recent = redis.call('ZLEXCOUNT', P .. 'starts:' .. j.flow_bucket, since, '+')
  if recent < tonumber(j.flow_rate) then return false end
  HELD[memo] = true
  return true
end

-- What the lease guards read of job ``id`` (its state, task and limits), in one HMGET.
local GUARDED = {'state', 'task', unpack(FLOW_FIELDS)}
function F.guarded(id)
  local values = redis.call('HMGET', P .. 'j:' .. id, unpack(GUARDED))
  local j = {id = id}
  for i, name in ipairs(GUARDED) do
    if values[i] then j[name] = values[i] end
  end
  return j
end

-- ``j`` was just leased under ``token``: record its start, forget starts over a day old.
function F.started(j, token)
  if not j.flow_bucket then return end
  local key = P .. 'starts:' .. j.flow_bucket
  redis.call('ZADD', key, 0, NOW .. ':' .. token)
  redis.call('ZREMRANGEBYLEX', key, '-', '(' .. H.t_add(NOW, 1 - FORGET_STARTS_US))
end

-- The ready sets of ``names`` merged in lease order (priority, run_at, id): a function
-- giving the next candidate's member and its queue's cursor, nil at the end.  Each set
-- is read in chunks (``first`` members, then four times more each time); a candidate
-- the caller passes over stays in its set, so the caller counts it in ``cursor.held``
-- and the next chunk starts after the held ones (the leased ones left the set).
function F.candidates(names, first)
  local cursors = {}
  for i, name in ipairs(names) do
    cursors[i] = {key = P .. 'ready:' .. name, buf = {}, pos = 1, held = 0, chunk = first}
  end
  local function peek(c)
    if c.pos > #c.buf then
      if c.done then return nil end
      local items = redis.call('ZRANGE', c.key, c.held, c.held + c.chunk - 1, 'WITHSCORES')
      c.buf, c.pos = {}, 1
      for i = 1, #items, 2 do c.buf[#c.buf + 1] = {tonumber(items[i + 1]), items[i]} end
      c.done = #c.buf < c.chunk
      c.chunk = c.chunk * 4
    end
    return c.buf[c.pos]
  end
  return function()
    local best, from
    for _, c in ipairs(cursors) do
      local item = peek(c)
      if item and (not best or item[1] < best[1] or (item[1] == best[1] and item[2] < best[2]))
      then
        best, from = item, c
      end
    end
    if not best then return nil end
    from.pos = from.pos + 1
    return best[2], from
  end
end
"""
)
"""The library's flow-control helpers (``F``, declared with ``H``), after ``H`` and
before the table."""
