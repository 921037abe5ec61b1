"""Flow control in the Redis store: each job's limits, the counts the guards read, the
groups of limited jobs, and the walk of a lease past held-back ones.

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
``P g:<q> NUL <task>   sorted set: the available jobs of a GROUP (queue, task and the
NUL <flow>``           stored limits text), scored and ordered as a ready set; the
                       group stands in its queue's ready set by its first member
====================== ============================================================

A lease is one script run, so no other lease can take a slot between a count
and the lease that uses it.  Held-back jobs stay available, and the lease
passes over them as far as it takes to fill the batch, as every store does (a
bound would starve a leasable job behind it: a sequence's head retried behind
more of its followers than the bound would never run, nor would they).  It
walks groups, not jobs (:func:`F.walk`, issue 17): the members of a group share
every guard's verdict within the call but sequence_waits', so one held member
passes over its whole group, or leads to its key's head.  A lease costs
O(taken + groups held ahead), and the script holds the server meanwhile
(docs/redis.md).
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

-- The id of the head of ``key``'s sequence ('' when none), read once per call.
local function sequence_head(key)
  local head = HELD['s\0' .. key]
  if not head then
    head = redis.call('ZRANGE', P .. 'seq:' .. key, 0, 0)[1] or ''
    HELD['s\0' .. key] = head
  end
  return head
end

function F.sequence_waits(j)
  if not j.flow_sequence then return false end
  return sequence_head(j.flow_key) ~= j.id
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

-- The ready structure.  An available job without limits is a member of its queue's
-- ready set (``P ready:<queue>``: score ``-priority``, member ``run_at .. id``, so the
-- set is in lease order).  A limited one is a member of its GROUP's set (``P g:<queue>
-- NUL <task> NUL <flow>``, the same scores and members): the jobs of one queue and task
-- with the same stored limits, which share every guard's verdict within a lease call
-- but sequence_waits'.  A group with available jobs stands in its queue's ready set by
-- its first member in lease order, so the ready set has one entry per group.
function F.group_key(queue, task, flow)
  return P .. 'g:' .. queue .. '\0' .. task .. '\0' .. flow
end

-- The groups whose sets this call changed, each with its queue and its entry in the
-- ready set (its first member when the call first touched it; false: none).
-- F.settle_groups sets their entries right at the call's end, so no entry moves while
-- a lease walks the ready sets.
local TOUCHED = {}

local function touch(g, queue)
  local t = TOUCHED[g]
  if t == nil then
    t = {queue = queue, entry = redis.call('ZRANGE', g, 0, 0)[1] or false}
    TOUCHED[g] = t
  end
  return t
end

-- ``j`` becomes available (H.index) / is no longer (H.unindex).
function F.ready(j)
  local score, member = -tonumber(j.priority), j.run_at .. H.pad(j.id)
  if j.flow then
    local g = F.group_key(j.queue, j.task, j.flow)
    touch(g, j.queue)
    redis.call('ZADD', g, score, member)
  else
    redis.call('ZADD', P .. 'ready:' .. j.queue, score, member)
  end
end

function F.unready(j)
  local member = j.run_at .. H.pad(j.id)
  redis.call('ZREM', P .. 'ready:' .. j.queue, member)  -- unlimited, or an entry
  if j.flow then
    local g = F.group_key(j.queue, j.task, j.flow)
    local t = touch(g, j.queue)
    redis.call('ZREM', g, member)
    if t.entry == member then t.entry = false end  -- the group's entry went with it
  end
end

-- At the end of every call: each group it changed stands in its queue's ready set by its
-- first member now, and only by it (a group left empty, by none).
function F.settle_groups()
  for g, t in pairs(TOUCHED) do
    local top = redis.call('ZRANGE', g, 0, 0, 'WITHSCORES')
    if t.entry ~= (top[1] or false) then
      local ready = P .. 'ready:' .. t.queue
      if t.entry then redis.call('ZREM', ready, t.entry) end
      if top[1] then redis.call('ZADD', ready, top[2], top[1]) end
    end
  end
  TOUCHED = {}
end

-- Whether (score, member) ``x`` comes before ``y`` in lease order.
local function before(x, y)
  return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2])
end

-- The lease's walk of the ready sets of ``names``: a merge in lease order of their
-- entries (unlimited jobs and group entries: each set read in chunks of ``first``
-- members, then four times more each time) and of the walk's own candidates of the
-- groups it met (a binary heap).  ``next()`` gives the next candidate ``{score, member,
-- queue, cursor}`` (``cursor``: the ready set it came from, nil for a group's candidate
-- from the heap), or nil at the end.  The caller reports each candidate: ``taken(c, g,
-- rank)`` or ``held(c, j, g)`` (``g``: its group's key when it has limits).
--
-- Within one call the counts the guards read only grow (each take adds a running job
-- or a start; now is fixed; a sequence's head is read once and stays), so (docs/redis.md,
-- "How a call runs"): a member of a group held by task_at_limit, key_at_limit or
-- rate_exhausted holds every later member for the rest of the call, and the group is
-- passed over whole; one held by sequence_waits alone can only be followed by the key's
-- head, which is the group's next candidate at its own place in lease order if it is
-- an available member of the group, else the group is passed over; a member taken is
-- followed by the group's next member.  Unlimited jobs are walked one by one.  A group's
-- entry is only met once: entries move at the call's end (F.settle_groups).  The cost is
-- O(taken + groups held ahead), never a read of each held-back job.
function F.walk(names, first)
  local cursors, heap = {}, {}
  for i, name in ipairs(names) do
    cursors[i] = {key = P .. 'ready:' .. name, queue = name, buf = {}, pos = 1, held = 0,
      chunk = first}
  end
  local function peek(c)
    if c.pos > #c.buf then
      if c.done then return nil end
      local items = redis.call('ZRANGE', c.key, c.held, c.held + c.chunk - 1, 'WITHSCORES')
      c.buf, c.pos = {}, 1
      for i = 1, #items, 2 do
        c.buf[#c.buf + 1] = {tonumber(items[i + 1]), items[i], c.queue, c}
      end
      c.done = #c.buf < c.chunk
      c.chunk = c.chunk * 4
    end
    return c.buf[c.pos]
  end
  local function push(item)
    local i = #heap + 1
    heap[i] = item
    while i > 1 do
      local up = math.floor(i / 2)
      if not before(heap[i], heap[up]) then break end
      heap[i], heap[up] = heap[up], heap[i]
      i = up
    end
  end
  local function pop()
    local top, last = heap[1], table.remove(heap)
    if #heap > 0 then
      heap[1] = last
      local i = 1
      while true do
        local least, l, r = i, 2 * i, 2 * i + 1
        if l <= #heap and before(heap[l], heap[least]) then least = l end
        if r <= #heap and before(heap[r], heap[least]) then least = r end
        if least == i then break end
        heap[i], heap[least] = heap[least], heap[i]
        i = least
      end
    end
    return top
  end
  local walk = {}
  function walk.next()
    local best
    for _, c in ipairs(cursors) do
      local item = peek(c)
      if item and (not best or before(item, best)) then best = item end
    end
    if heap[1] and (not best or before(heap[1], best)) then return pop() end
    if best then best[4].pos = best[4].pos + 1 end
    return best
  end
  -- A candidate taken left the ready set if it stood in it; its group (at ``rank`` in
  -- the group's set before the take) goes on with its next member.  (A job with limits
  -- made available by a process of version 3 or older stands in the ready set alone,
  -- not in its group: it has no rank, and its group goes on from its own entry.)
  function walk.taken(item, g, rank)
    if not g or not rank then return end
    local after = redis.call('ZRANGE', g, rank, rank, 'WITHSCORES')
    if after[1] then push({tonumber(after[2]), after[1], item[3]}) end
  end
  -- A candidate held back stays where it stands; its group goes on only with the head
  -- of its key's sequence when sequence_waits alone holds it.
  function walk.held(item, j, g)
    if item[4] then item[4].held = item[4].held + 1 end
    if not g or not F.sequence_waits(j) then return end
    if F.task_at_limit(j) or F.key_at_limit(j) or F.rate_exhausted(j) then return end
    local head = sequence_head(j.flow_key)
    local member = redis.call('HGET', P .. 'j:' .. head, 'run_at') .. H.pad(head)
    local score = redis.call('ZSCORE', g, member)
    if score then push({tonumber(score), member, item[3]}) end
  end
  return walk
end
"""
)
"""The library's flow-control helpers (``F``, declared with ``H``), after ``H`` and
before the table."""
