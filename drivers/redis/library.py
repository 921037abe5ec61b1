"""The store's Lua script library: every SPI call is one run of this one script.

Redis runs a script atomically, so each call is one transaction with no
``WATCH`` and no retries, whatever the number of workers.  The state changes
themselves are the compiled table (:mod:`.transitions`); this module adds the
parts the table does not say: where a job is kept (its hash and the indexes a
state puts it in), the workflow effects, and the commands.

Key layout (``P`` is the store's prefix, ``{name}:``: one hash tag, so a Redis
Cluster keeps the whole store in one slot):

=================== ==============================================================
``P j:<id>``        hash: the job's fields (times as 18-digit microsecond strings)
``P ids``           hash: the last job id and workflow id drawn
``P keys``          hash: idempotency key -> the id of its last taker (holding it
                    while its ``key_scope`` and ``key_until`` say so)
``P ready:<queue>`` sorted set of ``available`` jobs without limits: score ``-priority``,
                    member ``run_at .. id`` (fixed width, so ties sort by run_at, then id),
                    and of the first member of each group of limited ones (:mod:`.flow`)
``P delayed``       sorted set of ``scheduled``/``retrying`` jobs by ``run_at``
``P running``       sorted set of ``running`` jobs by ``lease_expires_at``
``P finished``      sorted set of finished jobs by ``finished_at``
``P st:<state>``    sorted set of job ids in a state (score: the id)
``P q:<queue>``     sorted set of a queue's job ids; ``P all``: every job id
``P counts``        hash: ``queue NUL state`` -> how many jobs
``P fin:<minute>``  hash: ``queue NUL state`` -> how many stored finished jobs have a
                    ``finished_at`` in that minute (``<minute>``: its start, as a time)
``P fin``           sorted set of the minutes that have a ``P fin:<minute>``, scored by
                    their start in seconds: one per minute holding a finished job, gone
                    with its last (prune, requeue), so never more than the finished jobs
``P w:<id>``        hash: a workflow (state, steps, result, per-state step counts, the
                    failure callback's job id ``on_failure``, the idempotency key)
``P wfs``           sorted set of workflow ids; ``P wst:<state>`` per state
``P wkeys``         hash: workflow idempotency key -> workflow id
``P paused``        hash: paused queue -> when it was paused (:mod:`.queues`)
``P wk:<id>``       hash: a registered worker; ``P workers``: their ids by the instant
                    each is forgotten (:mod:`.workers`)
``P wake``          pub/sub channel: a queue's name when one of its jobs became available
``P meta``          hash: the store's ``version``
``P done``          pub/sub channel: one notice per call that finished jobs, naming them
                    (:mod:`taskharbor.drivers.finished_watches`)
=================== ==============================================================

Flow control's counts and sets (``P run:task``, ``P run:key``, ``P seq:<key>``,
``P starts:<bucket>``, the groups' ``P g:...``) and the lease's walk past held-back
jobs are :mod:`.flow`'s.

Lua's numbers are doubles, and a microsecond count since year 1 exceeds 2**53:
times stay strings (compared as strings, added with :func:`t_add` on split
parts), and a sorted set's score gets the string itself (Redis parses it, so
rounding is monotonic), with the exact order restored by the member, which
starts with the same fixed-width string.  Payloads (args, kwargs, results) are
opaque strings, never decoded by cjson.  Lease tokens come from the caller
(scripts cannot draw random values).
"""

from __future__ import annotations

import json

from taskharbor.spec.keys import KeyHold
from taskharbor.spec.records import (
    CALLBACK_CANCELS,
    LEASE_EXPIRED_MESSAGE,
    LEASE_EXPIRED_TYPE,
    PRUNABLE_WORKFLOW_STATES,
    WORKFLOW_CANCELLED,
    dependency_reason,
)
from taskharbor.spec.table import WORKFLOW, WorkflowState

from ..finished_watches import ANY_JOB, NOTICE_MAX_ITEMS
from .flow import FLOW_LUA
from .rows import REQUEST_FIELDS
from .transitions import CONSTANTS_LUA, TRANSITIONS_LUA


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def error_fragment(kind: str, message: str, traceback: str | None) -> str:
    """An error report as the inside of a JSON object; the script adds attempt and time."""
    return json.dumps({"type": kind, "message": message, "traceback": traceback})[1:-1]


def _workflow_constants() -> str:
    states = ", ".join(f"{s.name.lower()} = {lua_string(s)}" for s in WorkflowState)
    moves = ", ".join(
        f"[{lua_string(a + '>' + b)}] = true"
        for a in WORKFLOW.states
        for b in WORKFLOW.states
        if a != b and _has_event(a, b)
    )
    final = ", ".join(f"[{lua_string(s)}] = true" for s in sorted(WORKFLOW.final_states))
    prunable = ", ".join(f"[{lua_string(s)}] = true" for s in sorted(PRUNABLE_WORKFLOW_STATES))
    cancels = ", ".join(
        f"[{lua_string(state)}] = {lua_string(reason)}"
        for state, reason in CALLBACK_CANCELS.items()
    )
    sample_id, sample_state = 987654321012345, "\x01"
    reason = dependency_reason(sample_id, sample_state)
    head, rest = reason.split(str(sample_id), 1)
    middle, tail = rest.split(sample_state, 1)
    reason_lua = f"{lua_string(head)} .. id .. {lua_string(middle)} .. state .. {lua_string(tail)}"
    return "\n".join(
        [
            f"local W = {{{states}}}",
            f"local W_MOVES = {{{moves}}}",
            f"local W_FINAL = {{{final}}}",
            f"local W_PRUNABLE = {{{prunable}}}",
            f"local WORKFLOW_CANCELLED = {lua_string(WORKFLOW_CANCELLED)}",
            f"local CALLBACK_CANCELS = {{{cancels}}}",
            *_error_layout(),
            f"local KEY_UNFINISHED = {lua_string(KeyHold.UNFINISHED.value)}",
            "local LEASE_EXPIRED_ERROR = "
            + lua_string(error_fragment(LEASE_EXPIRED_TYPE, LEASE_EXPIRED_MESSAGE, None)),
            f"local function dependency_reason(id, state) return {reason_lua} end",
            f"local NOTICE_MAX_ITEMS = {NOTICE_MAX_ITEMS}",
            f"local ANY_JOB = {lua_string(ANY_JOB)}",
        ]
    )


def _error_layout() -> list[str]:
    """Lua constants for reading a stored error back: where each error object starts
    (``H.append_error``), and the text before its type and its message tokens."""
    sample = error_fragment("\x01", "\x02", None)
    kind, message = json.dumps("\x01"), json.dumps("\x02")
    before_type, rest = sample.split(kind, 1)
    before_message = rest.split(message, 1)[0]
    return [
        f"local ERROR_START = {lua_string(ERROR_START)}",
        f"local FRAGMENT_TYPE = {lua_string(before_type)}",
        f"local FRAGMENT_MESSAGE = {lua_string(before_message)}",
    ]


ERROR_START = '{"attempt":'
"""How each stored error object starts (the text cannot occur inside a JSON string,
where every quote is escaped)."""


def _has_event(source: str, target: str) -> bool:
    try:
        WORKFLOW.event_for(source, target)
    except Exception:
        return False
    return True


_HELPERS = r"""
local P = KEYS[1]
local NOW
local H = {}
local F = {}
local CMD = {}
local WAKE = {}
local DONE = {}
local PARTIAL = {}

function H.server_now()
  local t = redis.call('TIME')
  return string.format('%012d%06d', tonumber(t[1]) + 62135596800, tonumber(t[2]))
end

function H.t_add(t, delta)
  local s = tonumber(string.sub(t, 1, 12))
  local us = tonumber(string.sub(t, 13)) + tonumber(delta)
  local carry = math.floor(us / 1000000)
  return string.format('%012d%06d', s + carry, us - carry * 1000000)
end

function H.pad(id) return string.format('%015d', tonumber(id)) end

-- The job id of a ready set's member (``run_at .. H.pad(id)``).
function H.member_id(member) return string.match(string.sub(member, 19), '^0*(%d+)$') end

function H.split(text)
  local out = {}
  if text then for part in string.gmatch(text, '[^,]+') do out[#out + 1] = part end end
  return out
end

function H.set(j, f, v) j[f] = v; j._dirty[f] = true end

function H.load(id)
  local flat = redis.call('HGETALL', P .. 'j:' .. id)
  if #flat == 0 then return nil end
  local j = {_dirty = {}}
  for i = 1, #flat, 2 do j[flat[i]] = flat[i + 1] end
  return j
end

function H.flat(j)
  local out = {}
  for k, v in pairs(j) do
    if k ~= '_dirty' and type(v) == 'string' then out[#out + 1] = k; out[#out + 1] = v end
  end
  return out
end

function H.flush(j)
  local sets, dels = {}, {}
  for f in pairs(j._dirty) do
    if j[f] == nil then dels[#dels + 1] = f else sets[#sets + 1] = f; sets[#sets + 1] = j[f] end
  end
  local key = P .. 'j:' .. j.id
  if #sets > 0 then redis.call('HSET', key, unpack(sets)) end
  if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
  j._dirty = {}
end

-- A workflow's step that counts when the workflow's state is derived: not its failure
-- callback (a job of the workflow, not a step) nor a tolerated step (one whose every
-- dependent is partial or tolerated: spec.records.tolerated_steps).
function H.is_step(j) return j.workflow_id ~= nil and j.callback == nil and j.tolerated == nil end

-- Count the finished job ``j`` (in state ``s``) in the minute of its finished_at
-- (``by`` = 1), or no longer (-1): ``P fin:<minute>`` and ``P fin`` (finished_per_minute).
function H.count_finished(j, s, by)
  local start = math.floor(tonumber(string.sub(j.finished_at, 1, 12)) / 60) * 60
  local minute = string.format('%012d', start) .. '000000'
  local key, field = P .. 'fin:' .. minute, j.queue .. '\0' .. s
  local n = redis.call('HINCRBY', key, field, by)
  if by > 0 then
    if n == by then redis.call('ZADD', P .. 'fin', start, minute) end
  elseif n <= 0 then
    redis.call('HDEL', key, field)
    if redis.call('EXISTS', key) == 0 then redis.call('ZREM', P .. 'fin', minute) end
  end
end

function H.unindex(j)
  local s, id = j.state, j.id
  if s == S.available then
    F.unready(j)
  elseif DELAYED[s] then
    redis.call('ZREM', P .. 'delayed', j.run_at .. ':' .. id)
  elseif s == S.running then
    redis.call('ZREM', P .. 'running', j.lease_expires_at .. ':' .. id)
  elseif FINISHED[s] then
    redis.call('ZREM', P .. 'finished', j.finished_at .. ':' .. id)
    H.count_finished(j, s, -1)
  end
  redis.call('ZREM', P .. 'st:' .. s, id)
  F.leave(j, s)
  redis.call('HINCRBY', P .. 'counts', j.queue .. '\0' .. s, -1)
  if H.is_step(j) then redis.call('HINCRBY', P .. 'w:' .. j.workflow_id, 'n:' .. s, -1) end
end

function H.index(j)
  local s, id = j.state, j.id
  if s == S.available then
    F.ready(j)
    WAKE[j.queue] = true
  elseif DELAYED[s] then
    redis.call('ZADD', P .. 'delayed', j.run_at, j.run_at .. ':' .. id)
  elseif s == S.running then
    redis.call('ZADD', P .. 'running', j.lease_expires_at, j.lease_expires_at .. ':' .. id)
  elseif FINISHED[s] then
    redis.call('ZADD', P .. 'finished', j.finished_at, j.finished_at .. ':' .. id)
    H.count_finished(j, s, 1)
    DONE[#DONE + 1] = id
  end
  redis.call('ZADD', P .. 'st:' .. s, id, id)
  F.enter(j, s)
  redis.call('HINCRBY', P .. 'counts', j.queue .. '\0' .. s, 1)
  if H.is_step(j) then redis.call('HINCRBY', P .. 'w:' .. j.workflow_id, 'n:' .. s, 1) end
end

-- Event ``event`` to ``target`` (resolved by the caller), with its field effects.
function H.move(j, event, target, C)
  local ended = FINISHED[j.state] == true
  H.unindex(j)
  APPLY[event](j, target, C)
  H.flush(j)
  H.index(j)
  if j.partials and ended ~= (FINISHED[target] == true) then H.count_end(j, ended) end
end

-- A partial step counts in ``left`` its dependencies that have not ended, so every move
-- of one into or out of an end changes it; the call that brings it to 0 lists the step
-- for release at its end (H.settle), so exactly one call releases it.
function H.count_end(j, reopened)
  for _, d in ipairs(H.split(j.partials)) do
    local left = redis.call('HINCRBY', P .. 'j:' .. d, 'left', reopened and 1 or -1)
    if left == 0 then PARTIAL[#PARTIAL + 1] = d end
  end
end

function H.append_error(errors, attempt, fragment)
  local e = ERROR_START .. attempt .. ',"at":"' .. NOW .. '",' .. fragment .. '}'
  if errors == nil or errors == '[]' then return '[' .. e .. ']' end
  return string.sub(errors, 1, -2) .. ',' .. e .. ']'
end

-- A released job's args: its own, with the value of its input (or what the call puts
-- in front: a failure callback's failure; a partial step's two values) first.
function H.released_args(j, C)
  local own = j.own_args or j.args
  local value = C and C.front
  if not value and j.input and j.partial then
    value = H.partial_input(j.input)
  elseif not value and j.input then
    value = (string.gsub(j.input, '#(%d+)#', function(id)
      local result = redis.call('HGET', P .. 'j:' .. id, 'result')
      if not result then return 'null' end
      return result
    end))
  end
  if not value then return own end
  if own == '[]' then return '[' .. value .. ']' end
  return '[' .. value .. ',' .. string.sub(own, 2)
end

-- ``spec.records.partial_input`` of a partial step's input template (brackets, commas
-- and ``#id#`` only), as the text of its two JSON values: the results of the steps that
-- succeeded, in place (a left-out step leaves no comma behind), then a
-- ``member_failure`` for each that did not, in order.  Results stay opaque strings.
function H.partial_input(template)
  local out, failures, position, comma = {}, {}, 0, {false}
  local function put(text)
    if comma[#comma] then out[#out + 1] = ',' end
    comma[#comma] = true
    out[#out + 1] = text
  end
  for item in string.gmatch(template, '[^,]+') do
    local opens, id, closes = string.match(item, '^(%[*)#?(%d*)#?(%]*)$')
    for _ = 1, #opens do
      put('[')
      comma[#comma + 1] = false
    end
    if id ~= '' then
      local f = redis.call('HMGET', P .. 'j:' .. id, 'state', 'result')
      if f[1] == S.succeeded then
        put(f[2] or 'null')
      else
        failures[#failures + 1] = H.member_failure(position, id, f[1])
      end
      position = position + 1
    end
    for _ = 1, #closes do
      out[#out + 1] = ']'
      comma[#comma] = nil
    end
  end
  return table.concat(out) .. ',[' .. table.concat(failures, ',') .. ']'
end

-- ``spec.records.member_failure`` of step ``id`` (ended ``state``) as JSON, its last
-- error read out of its stored errors as H.step_failure reads it.
function H.member_failure(position, id, state)
  local f = redis.call('HMGET', P .. 'j:' .. id, 'task', 'attempt', 'errors', 'reason')
  local kind, message = H.last_error(f[3])
  local reason = f[4] and H.json_string(f[4]) or 'null'
  return '{"index":' .. string.format('%d', position) .. ',"job_id":' .. id .. ',"task":'
    .. H.json_string(f[1]) .. ',"state":' .. H.json_string(state) .. ',"attempt":' .. f[2]
    .. ',"type":' .. kind .. ',"message":' .. message .. ',"reason":' .. reason .. '}'
end

-- A released failure callback requeued keeps its failure in front of its args.
function H.requeued_args(j, target)
  if target == S.available then
    if j.callback then return j.args end
    return H.released_args(j)
  end
  return j.own_args or j.args
end

function H.new_job(a, b, workflow_id, deps, input, callback, flags)
  local id = tostring(redis.call('HINCRBY', P .. 'ids', 'job', 1))
  local j = {
    _dirty = {}, id = id, task = a[b + 1], queue = a[b + 2], args = a[b + 3],
    kwargs = a[b + 4], priority = a[b + 5], attempt = '0', max_attempts = a[b + 7],
    created_at = NOW, errors = '[]', retry = a[b + 9], state = NEW,
  }
  j.run_at = a[b + 6] ~= '' and a[b + 6] or NOW
  if a[b + 10] ~= '' then j.headers = a[b + 10] end
  if a[b + 11] ~= '' then
    j.tags = a[b + 11]
    for tag in string.gmatch(j.tags, '[^%z]+') do redis.call('ZADD', P .. 'tag:' .. tag, id, id) end
  end
  if a[b + 12] ~= '' then j.meta = a[b + 12] end
  if a[b + 13] ~= '' then j.key_scope = a[b + 13] end
  if a[b + 14] ~= '' then j.key_until = H.t_add(NOW, a[b + 14]) end
  F.fields(j, a, b + 14)
  if a[b + 8] ~= '' then
    j.idempotency_key = a[b + 8]
    redis.call('HSET', P .. 'keys', a[b + 8], id)
  end
  if workflow_id then
    j.workflow_id = workflow_id
    if #deps > 0 then
      j.depends_on = table.concat(deps, ',')
      j.left = tostring(#deps)
    end
    if input then j.input = input; j.own_args = j.args end
    if callback then j.callback = '1'; j.own_args = j.args end
    if flags and string.find(flags, 'p', 1, true) then j.partial = '1' end
    if flags and string.find(flags, 't', 1, true) then j.tolerated = '1' end
  end
  j.state = RESOLVE.enqueue(j, {})
  local fields = H.flat(j)
  redis.call('HSET', P .. 'j:' .. id, unpack(fields))
  H.index(j)
  redis.call('ZADD', P .. 'all', id, id)
  redis.call('ZADD', P .. 'q:' .. j.queue, id, id)
  return j
end

-- The job holding an idempotency key now: its last taker, while the taker's scope says
-- so (taskharbor.spec.keys).  A new job stored with the key becomes its last taker.
function H.key_holder(key)
  local id = redis.call('HGET', P .. 'keys', key)
  if not id then return nil end
  local j = H.load(id)
  if j.key_scope == KEY_UNFINISHED and FINISHED[j.state] then return nil end
  if j.key_until and j.key_until <= NOW then return nil end
  return j
end

function H.delete_job(j)
  H.unindex(j)
  local key = j.idempotency_key
  if key and redis.call('HGET', P .. 'keys', key) == j.id then
    redis.call('HDEL', P .. 'keys', key)  -- else it gave the key up to a newer job
  end
  if j.tags then
    for tag in string.gmatch(j.tags, '[^%z]+') do redis.call('ZREM', P .. 'tag:' .. tag, j.id) end
  end
  redis.call('ZREM', P .. 'all', j.id)
  redis.call('ZREM', P .. 'q:' .. j.queue, j.id)
  redis.call('DEL', P .. 'j:' .. j.id)
end

-- Workflow effects of a step that may just have finished (same script, same call).
-- ``touched`` maps each workflow a call touched to the first of its steps that ended
-- dead in the call (the one its failure callback hears of), else true.
function H.after_finished(j, touched)
  if not j.workflow_id or not FINISHED[j.state] then return end
  local w = j.workflow_id
  if j.state == S.dead and H.is_step(j) and type(touched[w]) ~= 'string' then
    touched[w] = j.id
  else
    touched[w] = touched[w] or true
  end
  if j.state == S.succeeded then H.release_dependents(j) else H.cancel_dependents(j) end
end

-- Each dependent counts its dependencies that have not succeeded (``left``): the
-- call that brings it to 0 releases it, so a chord's callback is released once.  A
-- partial step is not among ``dependents`` but ``partials`` (H.count_end): neither
-- this release nor a cascade reaches it, or passes through it.
function H.release_dependents(j)
  for _, d in ipairs(H.split(j.dependents)) do
    local dj = H.load(d)
    local left = tonumber(dj.left or '1') - 1
    H.set(dj, 'left', tostring(left))
    local target = dj.state == S.pending and left == 0 and RESOLVE.release(dj, {})
    if target then H.move(dj, 'release', target, {}) else H.flush(dj) end
  end
end

function H.cancel_dependents(j)
  local reason = dependency_reason(j.id, j.state)
  local seen, stack = {}, H.split(j.dependents)
  while #stack > 0 do
    local d = table.remove(stack)
    if not seen[d] then
      seen[d] = true
      local dj = H.load(d)
      for _, x in ipairs(H.split(dj.dependents)) do stack[#stack + 1] = x end
      if dj.state == S.running then
        H.set(dj, 'cancel_requested', '1'); H.flush(dj)
      elseif not FINISHED[dj.state] then
        H.move(dj, 'cancel', RESOLVE.cancel(dj, {}), {reason = reason})
      end
    end
  end
end

-- A workflow's state derived from its per-state step counts, changed through the table
-- (a failed one stays failed when its dead steps were cancelled: derive_workflow_state).
-- A workflow whose state changes moves its pending failure callback on (H.move_callback).
-- First the partial steps whose last dependency ended in this call are released, those
-- still pending (a cancel of the step in the same call leaves it cancelled).
function H.settle(touched)
  for _, id in ipairs(PARTIAL) do
    local j = H.load(id)
    if j.state == S.pending and tonumber(j.left) == 0 then
      H.move(j, 'release', RESOLVE.release(j, {}), {})
    end
  end
  PARTIAL = {}
  local ids = {}
  for w in pairs(touched) do ids[#ids + 1] = w end
  table.sort(ids, function(x, y) return tonumber(x) < tonumber(y) end)
  for _, w in ipairs(ids) do
    local key = P .. 'w:' .. w
    local f = redis.call('HMGET', key, 'state', 'total', 'n:' .. S.dead, 'n:' .. S.cancelled,
      'n:' .. S.succeeded)
    local target = W.running
    if tonumber(f[3] or '0') > 0 then target = W.failed
    elseif tonumber(f[4] or '0') > 0 and f[1] == W.failed then target = W.failed
    elseif tonumber(f[4] or '0') > 0 then target = W.cancelled
    elseif tonumber(f[5] or '0') == tonumber(f[2]) then target = W.succeeded end
    if target ~= f[1] then
      if not W_MOVES[f[1] .. '>' .. target] then
        error('workflow ' .. w .. ': no event moves it from ' .. f[1] .. ' to ' .. target)
      end
      redis.call('HSET', key, 'state', target)
      if target == W.running then
        redis.call('HDEL', key, 'finished_at')
      else
        redis.call('HSET', key, 'finished_at', NOW)
      end
      redis.call('ZREM', P .. 'wst:' .. f[1], w)
      redis.call('ZADD', P .. 'wst:' .. target, w, w)
      H.move_callback(w, target, touched[w])
    end
  end
end

-- A pending failure callback, at the end of a call that changed its workflow's state:
-- released with the failure of ``dead`` (the first step dead in the call) in front of
-- its args when the workflow failed, cancelled when it succeeded or was cancelled.
function H.move_callback(w, state, dead)
  local id = redis.call('HGET', P .. 'w:' .. w, 'on_failure')
  local cb = id and H.load(id)
  if not cb or cb.state ~= S.pending then return end
  if state == W.failed then
    local C = {front = H.step_failure(w, dead)}
    H.move(cb, 'release', RESOLVE.release(cb, C), C)
  elseif CALLBACK_CANCELS[state] then
    H.move(cb, 'cancel', RESOLVE.cancel(cb, {}), {reason = CALLBACK_CANCELS[state]})
  end
end

-- ``spec.records.step_failure`` of the dead step ``id`` as JSON, written here: the
-- step's last error is read from its stored errors, never decoded and re-encoded.
function H.step_failure(w, id)
  local f = redis.call('HMGET', P .. 'j:' .. id, 'task', 'attempt', 'errors')
  local kind, message = H.last_error(f[3])
  return '{"workflow_id":' .. w .. ',"job_id":' .. id .. ',"task":' .. H.json_string(f[1])
    .. ',"attempt":' .. f[2] .. ',"type":' .. kind .. ',"message":' .. message .. '}'
end

function H.json_string(text)
  local escaped = string.gsub(text, '[%c"\\]', function(c)
    return string.format('\\u%04x', string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

-- The JSON string token that starts at ``from`` (a quote) in ``text``, and where it ends.
function H.json_token(text, from)
  local i = from + 1
  while true do
    local at = string.find(text, '["\\]', i)
    if not at then return nil end
    if string.sub(text, at, at) == '"' then return string.sub(text, from, at), at end
    i = at + 2
  end
end

-- The type and message of the last error in a job's errors (each written by
-- H.append_error around an ``error_fragment``), as JSON tokens; null when none.
function H.last_error(errors)
  local start, from = nil, 1
  while true do
    local at = string.find(errors, ERROR_START, from, true)
    if not at then break end
    start, from = at, at + 1
  end
  if not start then return 'null', 'null' end
  local _, type_at = string.find(errors, FRAGMENT_TYPE, start, true)
  local kind, after = H.json_token(errors, type_at + 1)
  local _, message_at = string.find(errors, FRAGMENT_MESSAGE, after, true)
  local message = H.json_token(errors, message_at + 1)
  return kind, message
end

-- Every job of workflow ``w``: its steps, then its failure callback if it has one.
function H.workflow_jobs(w)
  local f = redis.call('HMGET', P .. 'w:' .. w, 'steps', 'on_failure')
  local ids = H.split(f[1])
  if f[2] then ids[#ids + 1] = f[2] end
  return ids
end

function H.workflow_flat(w)
  return redis.call('HGETALL', P .. 'w:' .. w)
end

-- The fenced item's job while its lease is live; else nil, and the item is reported.
function H.fenced(id, token, lost, index)
  local j = H.load(id)
  if not j then
    lost[#lost + 1] = index; lost[#lost + 1] = ''
    return nil
  end
  if j.state ~= S.running or j.lease_token ~= token then
    lost[#lost + 1] = index; lost[#lost + 1] = j.state
    return nil
  end
  return j
end
"""

_COMMANDS = r"""
CMD.enqueue = function(a)
  local out = {}
  for b = 0, #a - 1, REQUEST_FIELDS do
    local holder = a[b + 8] ~= '' and H.key_holder(a[b + 8])
    if holder then
      out[#out + 1] = {0, H.flat(holder)}
    else
      out[#out + 1] = {1, H.flat(H.new_job(a, b, nil, {}, nil))}
    end
  end
  return out
end

-- Arguments: name, result template, idempotency key, then the steps (count first; each
-- its request, dependencies, input template and flags: ``p`` partial, ``t`` tolerated),
-- then the failure callback's request, if the graph has one.
CMD.enqueue_workflow = function(a)
  local wkey = a[3]
  local held = wkey ~= '' and redis.call('HGET', P .. 'wkeys', wkey)
  if held then return H.workflow_flat(held) end
  local wid = tostring(redis.call('HINCRBY', P .. 'ids', 'wf', 1))
  local n = tonumber(a[4])
  local ids, jobs, counted = {}, {}, n
  local function remap(template)
    return (string.gsub(template, '#(%d+)#', function(i) return '#' .. ids[tonumber(i)] .. '#' end))
  end
  for s = 0, n - 1 do
    local b = 4 + s * (REQUEST_FIELDS + 3)
    local deps = {}
    for index in string.gmatch(a[b + REQUEST_FIELDS + 1], '%d+') do
      deps[#deps + 1] = ids[tonumber(index)]
    end
    local input = nil
    if a[b + REQUEST_FIELDS + 2] ~= '' then input = remap(a[b + REQUEST_FIELDS + 2]) end
    local flags = a[b + REQUEST_FIELDS + 3]
    local j = H.new_job(a, b, wid, deps, input, nil, flags)
    ids[s] = j.id
    jobs[j.id] = j
    if j.tolerated then counted = counted - 1 end
    local list = j.partial and 'partials' or 'dependents'
    for _, d in ipairs(deps) do
      local dj = jobs[d]
      dj[list] = dj[list] and (dj[list] .. ',' .. j.id) or j.id
      redis.call('HSET', P .. 'j:' .. d, list, dj[list])
    end
  end
  local steps = {}
  for s = 0, n - 1 do steps[#steps + 1] = ids[s] end
  local key = P .. 'w:' .. wid
  local b = 4 + n * (REQUEST_FIELDS + 3)
  if #a > b then
    redis.call('HSET', key, 'on_failure', H.new_job(a, b, wid, {}, nil, true).id)
  end
  redis.call('HSET', key, 'id', wid, 'state', W.running, 'steps', table.concat(steps, ','),
    'result', remap(a[2]), 'created_at', NOW, 'total', tostring(counted))
  if a[1] ~= '' then redis.call('HSET', key, 'name', a[1]) end
  if wkey ~= '' then
    redis.call('HSET', key, 'idempotency_key', wkey)
    redis.call('HSET', P .. 'wkeys', wkey, wid)
  end
  redis.call('ZADD', P .. 'wfs', wid, wid)
  redis.call('ZADD', P .. 'wst:' .. W.running, wid, wid)
  return H.workflow_flat(wid)
end

-- The queues of ``names`` that are not paused, in order.
function H.unpaused(names)
  if #names == 0 or redis.call('EXISTS', P .. 'paused') == 0 then return names end
  local paused, out = redis.call('HMGET', P .. 'paused', unpack(names)), {}
  for i, q in ipairs(names) do
    if not paused[i] then out[#out + 1] = q end
  end
  return out
end

-- The candidates in lease order (F.walk: unlimited jobs, and the groups of limited ones);
-- one that a flow guard holds back (RESOLVE gives nil) stays available, and the walk goes
-- on, until the batch is full or the candidates run out.
CMD.lease = function(a)
  local lease_until, worker, limit, nq = H.t_add(NOW, a[1]), a[2], tonumber(a[3]), tonumber(a[4])
  local names = H.unpaused({unpack(a, 5, 4 + nq)})
  local walk = F.walk(names, limit)
  local out = {}
  while #out < limit do
    local item = walk.next()
    if not item then break end
    local id = H.member_id(item[2])
    local C = {token = a[4 + nq + #out + 1], worker = worker, lease_until = lease_until}
    local guarded = F.guarded(id)
    local g = guarded.flow and F.group_key(item[3], guarded.task, guarded.flow)
    local target = RESOLVE.lease(guarded, C)
    if target then
      local rank = g and redis.call('ZRANK', g, item[2])
      local j = H.load(id)
      H.move(j, 'lease', target, C)
      F.started(j, C.token)
      out[#out + 1] = H.flat(j)
      walk.taken(item, g, rank)
    else
      walk.held(item, guarded, g)
    end
  end
  return out
end

-- Extends the live leases, and marks the registered workers holding them seen.
CMD.heartbeat = function(a)
  local C = {lease_until = H.t_add(NOW, a[1])}
  local lost, asked, holders = {}, {}, {}
  for i = 2, #a, 3 do
    local j = H.fenced(a[i], a[i + 1], lost, (i + 1) / 3)
    if j then
      C.progress = a[i + 2] ~= '' and a[i + 2] or nil
      H.move(j, 'heartbeat', RESOLVE.heartbeat(j, C), C)
      if j.cancel_requested == '1' then asked[#asked + 1] = j.id end
      holders[j.leased_by] = true
    end
  end
  for worker in pairs(holders) do H.seen(worker) end
  return {lost, asked}
end

-- A fenced report (complete, fail, snooze): items of ``width`` arguments, each
-- ``id, token, ...``; ``context`` turns an item's arguments into what the event gives.
function H.report(a, width, event, context)
  local lost, touched = {}, {}
  for i = 1, #a, width do
    local j = H.fenced(a[i], a[i + 1], lost, (i - 1) / width + 1)
    if j then
      local C = context(i)
      H.move(j, event, RESOLVE[event](j, C), C)
      H.after_finished(j, touched)
    end
  end
  H.settle(touched)
  return lost
end

CMD.complete = function(a)
  return H.report(a, 3, 'succeed', function(i) return {result = a[i + 2]} end)
end

CMD.fail = function(a)
  return H.report(a, 5, 'fail', function(i)
    local run_at = a[i + 3] ~= '' and a[i + 3] or NOW
    return {error = a[i + 2], run_at = run_at, permanent = a[i + 4] == '1'}
  end)
end

CMD.snooze = function(a)
  return H.report(a, 3, 'snooze', function(i) return {run_at = a[i + 2]} end)
end

-- The jobs of ``ids`` in order, or an error naming the first missing one.
function H.load_all(ids)
  local jobs = {}
  for i, id in ipairs(ids) do
    local j = H.load(id)
    if not j then return nil, {'!', 'job_not_found', id} end
    jobs[i] = j
  end
  return jobs
end

function H.reloaded(jobs)
  local out = {}
  for i, j in ipairs(jobs) do out[i] = H.flat(H.load(j.id)) end
  return out
end

CMD.cancel = function(a)
  local jobs, err = H.load_all(a)
  if not jobs then return err end
  for _, j in ipairs(jobs) do
    if j.state ~= S.running and not RESOLVE.cancel(j, {}) then
      return {'!', 'invalid', 'cancel', j.id, j.state}
    end
  end
  local touched = {}
  for _, j in ipairs(jobs) do
    local now = H.load(j.id)
    if now.state == j.state then  -- else cancelled earlier in this call by a cascade
      if now.state == S.running then
        H.set(now, 'cancel_requested', '1'); H.flush(now)
      else
        H.move(now, 'cancel', RESOLVE.cancel(now, {}), {})
        H.after_finished(now, touched)
      end
    end
  end
  H.settle(touched)
  return H.reloaded(jobs)
end

function H.requeue(j)
  H.move(j, 'requeue', RESOLVE.requeue(j, {}), {})
end

CMD.requeue = function(a)
  local jobs, err = H.load_all(a)
  if not jobs then return err end
  for _, j in ipairs(jobs) do
    if not RESOLVE.requeue(j, {}) then return {'!', 'invalid', 'requeue', j.id, j.state} end
  end
  local touched, item_state = {}, {}
  for _, j in ipairs(jobs) do item_state[j.id] = j.state end
  for _, j in ipairs(jobs) do
    local now = H.load(j.id)
    if now.state == j.state then  -- else requeued earlier in this call with its workflow
      local w = now.workflow_id
      if w and redis.call('HGET', P .. 'w:' .. w, 'state') ~= W.succeeded then
        touched[w] = true
        -- The items of this workflow and its cancelled steps, in id order: a step comes
        -- after those it depends on, so a partial step waits for every dependency that
        -- this call brings back.
        for _, id in ipairs(H.workflow_jobs(w)) do
          local step = H.load(id)
          if step.state == S.cancelled or item_state[id] == step.state then H.requeue(step) end
        end
      else
        H.requeue(now)  -- alone (a tolerated step of a succeeded workflow, left as it is)
      end
    end
  end
  H.settle(touched)
  return H.reloaded(jobs)
end

CMD.cancel_workflow = function(a)
  local w = a[1]
  local state = redis.call('HGET', P .. 'w:' .. w, 'state')
  if not state then return {'!', 'workflow_not_found', w} end
  if W_FINAL[state] then return {'!', 'workflow_finished', w, state} end
  for _, id in ipairs(H.workflow_jobs(w)) do
    local j = H.load(id)
    if j.state == S.running then
      H.set(j, 'cancel_requested', '1'); H.set(j, 'reason', WORKFLOW_CANCELLED); H.flush(j)
    elseif not FINISHED[j.state] then
      H.move(j, 'cancel', RESOLVE.cancel(j, {}), {reason = WORKFLOW_CANCELLED})
    end
  end
  H.settle({[w] = true})
  return H.workflow_flat(w)
end

-- Promote up to a batch of due jobs.  Members whose exact time is not due yet can only
-- share the last score with due ones, and sort after them: so a batch that promoted
-- fewer than it read has left nothing due behind.
CMD.promote = function(a)
  local members = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, a[1])
  local n = 0
  for _, m in ipairs(members) do
    if string.sub(m, 1, 18) <= NOW then
      local j = H.load(string.sub(m, 20))
      H.move(j, 'promote', RESOLVE.promote(j, {}), {})
      n = n + 1
    end
  end
  local first = redis.call('ZRANGE', P .. 'delayed', 0, 0)
  return {n, first[1] and string.sub(first[1], 1, 18) or ''}
end

-- Rescue reads the expired leases (the caller computes each job's retry delay: the
-- spec's function, never re-implemented here), then applies lease_expired to those
-- still running under the same token and expired at this call's now.
CMD.expired = function(a)
  local members = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', NOW, 'LIMIT', 0, a[1])
  local out = {}
  for _, m in ipairs(members) do
    if string.sub(m, 1, 18) <= NOW then
      local f = redis.call('HMGET', P .. 'j:' .. string.sub(m, 20), 'id', 'lease_token', 'attempt',
        'retry')
      out[#out + 1] = f
    end
  end
  return out
end

CMD.rescue = function(a)
  local touched, done = {}, {}
  for i = 1, #a, 3 do
    local j = H.load(a[i])
    if j and j.state == S.running and j.lease_token == a[i + 1] and j.lease_expires_at <= NOW then
      local C = {delay_us = a[i + 2], error = LEASE_EXPIRED_ERROR}
      H.move(j, 'lease_expired', RESOLVE.lease_expired(j, C), C)
      H.after_finished(j, touched)
      done[#done + 1] = j.id
    end
  end
  H.settle(touched)
  return done
end

function H.workflow_prunable(w, states, cutoff)
  if not W_PRUNABLE[redis.call('HGET', P .. 'w:' .. w, 'state')] then return false end
  for _, id in ipairs(H.workflow_jobs(w)) do
    local g = redis.call('HMGET', P .. 'j:' .. id, 'state', 'finished_at')
    if not states[g[1]] or not g[2] or g[2] >= cutoff then return false end
  end
  return true
end

function H.delete_workflow(w)
  local f = redis.call('HMGET', P .. 'w:' .. w, 'state', 'idempotency_key')
  local jobs = H.workflow_jobs(w)
  for _, id in ipairs(jobs) do H.delete_job(H.load(id)) end
  if f[2] then redis.call('HDEL', P .. 'wkeys', f[2]) end
  redis.call('DEL', P .. 'w:' .. w)
  redis.call('ZREM', P .. 'wfs', w)
  redis.call('ZREM', P .. 'wst:' .. f[1], w)
  return #jobs
end

-- One batch of prune: the finished jobs from ``offset`` on, in finished_at order.
-- Returns how many were (or would be) deleted, how many of the batch stay in the
-- index (the next batch's offset moves by that), and how many were read.
CMD.prune = function(a)
  local cutoff, dry, batch, offset = a[1], a[3] == '1', tonumber(a[4]), tonumber(a[5])
  local states = {}
  for _, s in ipairs(H.split(a[2])) do states[s] = true end
  local members = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', cutoff, 'LIMIT', offset,
    batch)
  local deleted, stay, decided = 0, 0, {}
  for _, m in ipairs(members) do
    local j = H.load(string.sub(m, 20))
    if j then  -- else deleted above in this batch with its workflow
      if j.workflow_id then
        local w = j.workflow_id
        if decided[w] == nil then decided[w] = H.workflow_prunable(w, states, cutoff) end
        if not decided[w] then
          stay = stay + 1
        elseif dry then
          deleted = deleted + 1
          stay = stay + 1
        else
          deleted = deleted + H.delete_workflow(w)
        end
      elseif states[j.state] and j.finished_at < cutoff then
        deleted = deleted + 1
        if dry then stay = stay + 1 else H.delete_job(j) end
      else
        stay = stay + 1
      end
    end
  end
  return {deleted, stay, #members}
end

CMD.get = function(a)
  local out = {}
  for i, id in ipairs(a) do
    local flat = redis.call('HGETALL', P .. 'j:' .. id)
    if #flat == 0 then return {'!', 'job_not_found', id} end
    out[i] = flat
  end
  return out
end

-- list_jobs: the matching ids of one index (a sorted set scored by id), in order,
-- at most ``limit``; the other filters are checked on each job's hash.
function H.scan(key, f, found)
  local lo = f.after ~= '' and ('(' .. f.after) or '-inf'
  local hi = f.before ~= '' and ('(' .. f.before) or '+inf'
  local offset, chunk, count = 0, 256, 0
  while count < f.limit do
    local ids
    if f.newest then
      ids = redis.call('ZREVRANGEBYSCORE', key, hi, lo, 'LIMIT', offset, chunk)
    else
      ids = redis.call('ZRANGEBYSCORE', key, lo, hi, 'LIMIT', offset, chunk)
    end
    for _, id in ipairs(ids) do
      if H.matches(id, f) then
        found[#found + 1] = tonumber(id)
        count = count + 1
        if count >= f.limit then break end
      end
    end
    if #ids < chunk then break end
    offset = offset + chunk
  end
end

function H.matches(id, f)
  local g = redis.call('HMGET', P .. 'j:' .. id, 'state', 'task', 'queue', 'created_at')
  return (not f.states or f.states[g[1]]) and (f.task == '' or g[2] == f.task)
    and (f.queue == '' or g[3] == f.queue) and (f.since == '' or g[4] >= f.since)
    and (f.tag == '' or redis.call('ZSCORE', P .. 'tag:' .. f.tag, id))
end

CMD.list_jobs = function(a)
  local f = {task = a[2], queue = a[3], after = a[5], before = a[6], since = a[7],
    limit = tonumber(a[8]), newest = a[9] == '1', tag = a[10]}
  if a[1] ~= '' then
    f.states = {}
    for _, s in ipairs(H.split(a[1])) do f.states[s] = true end
  end
  local found = {}
  if a[4] ~= '' then
    local steps = H.workflow_jobs(a[4])
    local lo, hi = tonumber(f.after) or -1, tonumber(f.before) or math.huge
    local first, last, step = 1, #steps, 1
    if f.newest then first, last, step = #steps, 1, -1 end
    for i = first, last, step do
      local id = tonumber(steps[i])
      if #found >= f.limit then break end
      if id > lo and id < hi and H.matches(id, f) then found[#found + 1] = id end
    end
  elseif f.tag ~= '' then
    H.scan(P .. 'tag:' .. f.tag, f, found)
  elseif f.states then
    for s in pairs(f.states) do H.scan(P .. 'st:' .. s, f, found) end
    if f.newest then table.sort(found, function(x, y) return x > y end) else table.sort(found) end
  elseif f.queue ~= '' then
    H.scan(P .. 'q:' .. f.queue, f, found)
  else
    H.scan(P .. 'all', f, found)
  end
  local out = {}
  for i = 1, math.min(#found, f.limit) do
    out[i] = redis.call('HGETALL', P .. 'j:' .. found[i])
  end
  return out
end

CMD.count = function(a)
  return redis.call('HGETALL', P .. 'counts')
end

CMD.get_workflow = function(a)
  return H.workflow_flat(a[1])
end

CMD.list_workflows = function(a)
  local name, after, before, limit, newest = a[2], a[3], a[4], tonumber(a[5]), a[6] == '1'
  local lo = after ~= '' and ('(' .. after) or '-inf'
  local hi = before ~= '' and ('(' .. before) or '+inf'
  local keys = {}
  if a[1] ~= '' then
    for _, s in ipairs(H.split(a[1])) do keys[#keys + 1] = P .. 'wst:' .. s end
  else
    keys[1] = P .. 'wfs'
  end
  local found = {}
  for _, key in ipairs(keys) do
    local offset, count = 0, 0
    while count < limit do
      local ids
      if newest then
        ids = redis.call('ZREVRANGEBYSCORE', key, hi, lo, 'LIMIT', offset, 256)
      else
        ids = redis.call('ZRANGEBYSCORE', key, lo, hi, 'LIMIT', offset, 256)
      end
      for _, id in ipairs(ids) do
        local named = name == '' or redis.call('HGET', P .. 'w:' .. id, 'name') == name
        if count < limit and named then
          found[#found + 1] = tonumber(id)
          count = count + 1
        end
      end
      if #ids < 256 then break end
      offset = offset + 256
    end
  end
  if newest then table.sort(found, function(x, y) return x > y end) else table.sort(found) end
  local out = {}
  for i = 1, math.min(#found, limit) do out[i] = H.workflow_flat(found[i]) end
  return out
end

-- Mark a new store with version ``a[1]``; bring an older one to it.  Version 1 kept
-- no running counts: they are counted from its running jobs (none of which has a key).
-- Versions 1 and 2 kept no finished counts per minute: they are counted, once, from
-- the finished jobs.  Versions 1 to 3 kept every available job in its queue's ready set:
-- the limited ones move to their groups' sets, each group standing in the ready set by
-- its first member (F.ready; the call's end adds the entries).
CMD.migrate = function(a)
  local version = redis.call('HGET', P .. 'meta', 'version')
  if version == '1' then
    redis.call('DEL', P .. 'run:task')
    for _, id in ipairs(redis.call('ZRANGE', P .. 'st:' .. S.running, 0, -1)) do
      redis.call('HINCRBY', P .. 'run:task', redis.call('HGET', P .. 'j:' .. id, 'task'), 1)
    end
  end
  if version == '1' or version == '2' then
    for _, m in ipairs(redis.call('ZRANGE', P .. 'finished', 0, -1)) do
      local f = redis.call('HMGET', P .. 'j:' .. string.sub(m, 20), 'state', 'queue')
      if f[1] then H.count_finished({finished_at = m, queue = f[2]}, f[1], 1) end
    end
  end
  if version == '1' or version == '2' or version == '3' then
    for _, field in ipairs(redis.call('HKEYS', P .. 'counts')) do
      local queue, state = string.match(field, '^(.*)%z(.*)$')
      if state == S.available then H.group_ready(queue) end
    end
  end
  if not version or tonumber(version) < tonumber(a[1]) then
    redis.call('HSET', P .. 'meta', 'version', a[1])
  end
  return redis.call('HGET', P .. 'meta', 'version')
end

-- The limited jobs of ``queue``'s ready set moved to their groups (a store of version 3).
function H.group_ready(queue)
  local ready = P .. 'ready:' .. queue
  local items = redis.call('ZRANGE', ready, 0, -1)
  for _, member in ipairs(items) do
    local id = H.member_id(member)
    local f = redis.call('HMGET', P .. 'j:' .. id, 'task', 'flow', 'priority')
    if f[2] then
      redis.call('ZREM', ready, member)
      F.ready({id = id, queue = queue, task = f[1], flow = f[2], priority = f[3],
        run_at = string.sub(member, 1, 18)})
    end
  end
end

-- finished_per_minute: ``minute, queue NUL state, count`` for every minute from the
-- one starting at ``a[1]`` (a time) on, of queue ``a[2]`` only unless it is empty.
CMD.finished_per_minute = function(a)
  local since, queue = tonumber(string.sub(a[1], 1, 12)), a[2]
  local out = {}
  for _, minute in ipairs(redis.call('ZRANGEBYSCORE', P .. 'fin', since, '+inf')) do
    local flat = redis.call('HGETALL', P .. 'fin:' .. minute)
    for i = 1, #flat, 2 do
      local field = flat[i]
      if queue == '' or string.sub(field, 1, #queue + 1) == queue .. '\0' then
        out[#out + 1] = minute
        out[#out + 1] = field
        out[#out + 1] = flat[i + 1]
      end
    end
  end
  return out
end

-- 1 when one of the jobs ``a`` is finished or not stored (``wait_for_finished``).
CMD.any_finished = function(a)
  for _, id in ipairs(a) do
    local s = redis.call('HGET', P .. 'j:' .. id, 'state')
    if not s or FINISHED[s] then return 1 end
  end
  return 0
end

-- How many entries the ready sets of the unpaused queues of ``a`` hold (jobs without
-- limits, and groups): more than 0 while one of their jobs is available.
CMD.ready = function(a)
  local n = 0
  for _, q in ipairs(H.unpaused(a)) do n = n + redis.call('ZCARD', P .. 'ready:' .. q) end
  return n
end
"""

_DISPATCH = r"""
NOW = ARGV[2] ~= '' and ARGV[2] or H.server_now()
local args = {}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
local result = CMD[ARGV[1]](args)
F.settle_groups()
for q in pairs(WAKE) do redis.call('PUBLISH', P .. 'wake', q) end
if #DONE > NOTICE_MAX_ITEMS then
  redis.call('PUBLISH', P .. 'done', ANY_JOB)
elseif #DONE > 0 then
  redis.call('PUBLISH', P .. 'done', table.concat(DONE, ','))
end
return result
"""


def build_library(extra: str = "") -> str:
    """The whole script: constants, the compiled table, helpers, commands, dispatch.

    ``extra`` adds commands (the schedules capability's)."""
    return "\n".join(
        [
            CONSTANTS_LUA,
            _workflow_constants(),
            f"local REQUEST_FIELDS = {REQUEST_FIELDS}",
            _HELPERS,
            FLOW_LUA,
            TRANSITIONS_LUA,
            _COMMANDS,
            extra,
            _DISPATCH,
        ]
    )
