"""The spec's transition table and field effects, compiled into Lua at import.

As the SQL drivers compile each guard into a predicate and each event's
choices into a ``CASE``, this module turns :data:`taskharbor.spec.table.JOB`
and :func:`taskharbor.spec.effects.field_effects` into two Lua tables that the
store's script library (:mod:`.library`) calls for every state change:

* ``RESOLVE[event](j, C)``: the target state of ``event`` for the job ``j`` (a
  table of its stored fields), the spec's choices tried in order with each
  guard a Lua predicate; ``nil`` when the table does not allow the event.
* ``APPLY[event](j, target, C)``: the event's field effects from ``j.state``
  to ``target`` (the state effects and the event's own), then the new state.

``C`` carries what a call gives (the call's now is the script's ``NOW``): a
lease's token and worker, a result, an error, a retry time.  State names come
from :class:`~taskharbor.spec.table.JobState` as Lua constants ``S.<name>``.
"""

from __future__ import annotations

from taskharbor.spec.effects import Effect, field_effects
from taskharbor.spec.records import CANCELLED_BY_REQUEST
from taskharbor.spec.table import FINISHED_JOB_STATES, JOB, NEW, Choice, JobEvent, JobState

from .flow import GUARDS_LUA

GUARD_LUA = {
    "waits_on_dependencies": "(j.callback ~= nil or tonumber(j.left or '0') > 0)",
    "run_at_in_future": "(j.run_at > NOW)",
    "cancel_requested": "(j.cancel_requested == '1')",
    "permanent": "C.permanent",
    "attempts_exhausted": "(tonumber(j.attempt) >= tonumber(j.max_attempts))",
    **GUARDS_LUA,
}
"""Each guard of ``JOB_GUARDS`` as a Lua predicate on the stored job ``j`` (times are
fixed-width microsecond strings, so comparing them as strings is exact; ``left`` counts
a step's dependencies that have not succeeded, a partial step's those that have not
ended; a workflow's failure callback, marked ``callback``, always waits: its workflow
moves it on; the flow guards are :mod:`.flow`'s)."""

GIVEN_LUA = {
    (JobEvent.RELEASE, "args"): "H.released_args(j, C)",
    (JobEvent.REQUEUE, "args"): "H.requeued_args(j, target)",
    (JobEvent.LEASE, "leased_by"): "C.worker",
    (JobEvent.HEARTBEAT, "progress"): "C.progress or j.progress",
    (JobEvent.SUCCEED, "result"): "C.result",
    (JobEvent.FAIL, "run_at"): "C.run_at",
    (JobEvent.SNOOZE, "run_at"): "C.run_at",
}
"""The value a call gives for each ``Effect.GIVEN`` field of an event."""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _state(name: str) -> str:
    return "NEW" if name == NEW else f"S.{name}"


def _effect_lua(event: JobEvent, field: str, effect: Effect) -> str:
    """One Lua statement applying ``effect`` to ``field`` of ``j``."""
    values = {
        Effect.NOW: "NOW",
        Effect.CLEAR: "nil",
        Effect.ZERO: "'0'",
        Effect.INCREMENT: f"tostring(tonumber(j.{field}) + 1)",
        Effect.DECREMENT: f"tostring(tonumber(j.{field}) - 1)",
        Effect.NOW_PLUS_LEASE: "C.lease_until",
        Effect.NOW_PLUS_RETRY_DELAY: "H.t_add(NOW, C.delay_us)",
        Effect.NEW_TOKEN: "C.token",
        Effect.SET: f"C.reason or j.{field} or CANCELLED_BY_REQUEST",
        Effect.APPEND_ERROR: f"H.append_error(j.{field}, j.attempt, C.error)",
    }
    value = GIVEN_LUA[event, field] if effect is Effect.GIVEN else values[effect]
    return f"H.set(j, {_lua_string(field)}, {value})"


def _condition(choice: Choice) -> str:
    """When ``choice`` is taken: one of its guards holds (if it has any) and none of
    its ``unless`` guards (a lease's flow guards; ``nil`` then: the job is held back)."""
    parts = []
    if choice.guards:
        parts.append("(" + " or ".join(GUARD_LUA[guard] for guard in choice.guards) + ")")
    if choice.unless:
        parts.append("not (" + " or ".join(GUARD_LUA[guard] for guard in choice.unless) + ")")
    return " and ".join(parts)


def _resolve_function(event: JobEvent) -> str:
    lines = [f"RESOLVE[{_lua_string(event)}] = function(j, C)", "  local s = j.state"]
    for source in sorted(JOB.sources(event)):
        lines.append(f"  if s == {_state(source)} then")
        for choice in JOB.options(event, source):
            target = _state(choice.target)
            condition = _condition(choice)
            if condition:
                lines.append(f"    if {condition} then return {target} end")
            else:
                lines.append(f"    do return {target} end")
        lines.append("    return nil")
        lines.append("  end")
    lines += ["  return nil", "end"]
    return "\n".join(lines)


def _apply_function(event: JobEvent) -> str:
    lines = [f"APPLY[{_lua_string(event)}] = function(j, target, C)", "  local s = j.state"]
    for source in sorted(JOB.sources(event)):
        for target in sorted(JOB.targets(event, source)):
            effects = field_effects(event, JobState(source), JobState(target))
            statements = [
                _effect_lua(event, field, effect)
                for field, effect in sorted(effects.items())
                if effect is not Effect.KEEP
            ]
            lines.append(f"  if s == {_state(source)} and target == {_state(target)} then")
            lines += [f"    {statement}" for statement in statements]
            lines.append("  end")
    lines += ["  H.set(j, 'state', target)", "end"]
    return "\n".join(lines)


def _constants() -> str:
    states = ", ".join(f"{state.name.lower()} = {_lua_string(state)}" for state in JobState)
    finished = ", ".join(f"[{_lua_string(state)}] = true" for state in sorted(FINISHED_JOB_STATES))
    delayed = ", ".join(
        f"[{_lua_string(state)}] = true" for state in sorted(JOB.sources(JobEvent.PROMOTE))
    )
    return "\n".join(
        [
            f"local S = {{{states}}}",
            f"local NEW = {_lua_string(NEW)}",
            f"local FINISHED = {{{finished}}}",
            f"local DELAYED = {{{delayed}}}",
            f"local CANCELLED_BY_REQUEST = {_lua_string(CANCELLED_BY_REQUEST)}",
            "local RESOLVE, APPLY = {}, {}",
        ]
    )


def compile_table() -> tuple[str, str]:
    """The Lua constants, and the ``RESOLVE``/``APPLY`` functions of every event but
    ``enqueue`` (a new job's fields are written whole; it resolves from ``NEW``)."""
    functions = [_resolve_function(JobEvent.ENQUEUE)]
    for event in JobEvent:
        if event is not JobEvent.ENQUEUE:
            functions += [_resolve_function(event), _apply_function(event)]
    return _constants(), "\n".join(functions)


CONSTANTS_LUA, TRANSITIONS_LUA = compile_table()
