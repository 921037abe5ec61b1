"""A task's flow control as declared with ``@app.task(...)``, and the limits of each job.

The store enforces the limits (:mod:`taskharbor.spec.flow`); here they are made
from the declaration and the call, so each job carries its own:

* ``concurrency=N``: at most N running jobs *per key* when the job has a key,
  else per task; ``global_concurrency=M``: at most M running jobs of the task
  whatever their keys (both may be given).
* ``concurrency_key``: the name of an argument of the handler (the key is
  ``"<name>:<value>"``, so tasks that take the same argument share its keys), or a
  function of the call's arguments returning the key (``None``: no key);
  ``.options(concurrency_key="acct:42")`` gives one job's key as it is.
* ``sequence=True`` (or ``"block"``, ``"skip"``): the key's jobs start one at a
  time in enqueue order; a dead one blocks the key (``"block"``, the default)
  or is passed over (``"skip"``).
* ``rate_limit="100/m"``: at most 100 starts a minute of the task, or of each
  key with ``rate_limit_per_key=True``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskharbor.spec import Driver, EnqueueRequest, FlowLimits, InvalidRequest, OnDead, RateLimit

KeySource = str | Callable[..., object]
"""An argument's name, or a function of the call's arguments giving the key."""


@dataclass(frozen=True, slots=True)
class TaskFlow:
    """The flow control declared for a task; :meth:`limits` makes one job's."""

    concurrency: int | None = None
    global_concurrency: int | None = None
    key: KeySource | None = None
    sequence: OnDead | None = None
    rate: RateLimit | None = None

    @classmethod
    def declare(
        cls,
        task: str,
        *,
        concurrency: int | None,
        global_concurrency: int | None,
        concurrency_key: KeySource | None,
        sequence: bool | str | OnDead,
        rate_limit: str | RateLimit | None,
        rate_limit_per_key: bool,
    ) -> TaskFlow | None:
        """The declaration of ``@app.task(...)``, checked (``InvalidRequest`` naming the
        task); ``None`` when the task declares no flow control."""
        where = f"task {task}"
        if concurrency_key is not None and not (
            callable(concurrency_key) or (isinstance(concurrency_key, str) and concurrency_key)
        ):
            raise InvalidRequest(
                f"{where}: concurrency_key must be an argument name or a function of the "
                f"call's arguments, not {concurrency_key!r}"
            )
        on_dead = _on_dead(sequence, where)
        rate = _rate(rate_limit, rate_limit_per_key, where)
        flow = cls(concurrency, global_concurrency, concurrency_key, on_dead, rate)
        if flow == cls():
            return None
        flow.limits(task, {}, key="example")  # the numbers, checked now
        return flow

    def limits(
        self, task: str, arguments: Mapping[str, Any], *, key: str | None = None
    ) -> FlowLimits:
        """One job's limits: ``arguments`` are the call's, by parameter name (a function
        key gets them as keyword arguments); ``key`` overrides the declared one."""
        if key is None and self.key is not None:
            key = self._key_of(task, arguments)
        per_key = self.concurrency if key is not None else None
        on_task = [n for n in (self.global_concurrency, self.concurrency) if n is not None]
        if key is not None:
            on_task = [] if self.global_concurrency is None else [self.global_concurrency]
        try:
            return FlowLimits(
                concurrency=min(on_task) if on_task else None,
                key=key,
                key_concurrency=per_key,
                sequence=self.sequence,
                rate=self.rate,
            )
        except InvalidRequest as exc:
            raise InvalidRequest(f"task {task}: {exc}") from None

    def _key_of(self, task: str, arguments: Mapping[str, Any]) -> str | None:
        source = self.key
        if callable(source):
            found = source(**arguments)
            if found is not None and not isinstance(found, str):
                raise InvalidRequest(
                    f"task {task}: the concurrency_key function returned {found!r}, not a str"
                )
            return found
        assert source is not None
        if source not in arguments:
            raise InvalidRequest(
                f"task {task}: the concurrency key argument {source!r} was not given"
            )
        value = arguments[source]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidRequest(
                f"task {task}: the concurrency key argument {source}={value!r} must be a str "
                "or an int"
            )
        return f"{source}:{value}"


def _on_dead(sequence: bool | str | OnDead, where: str) -> OnDead | None:
    if sequence is False:
        return None
    if sequence is True:
        return OnDead.BLOCK
    try:
        return OnDead(sequence)
    except ValueError:
        raise InvalidRequest(
            f"{where}: sequence must be True, False, 'block' or 'skip', not {sequence!r}"
        ) from None


def _rate(rate: str | RateLimit | None, per_key: bool, where: str) -> RateLimit | None:
    if not isinstance(per_key, bool):
        raise InvalidRequest(f"{where}: rate_limit_per_key must be a bool, not {per_key!r}")
    if rate is None:
        if per_key:
            raise InvalidRequest(f"{where}: rate_limit_per_key needs a rate_limit")
        return None
    try:
        if isinstance(rate, RateLimit):
            return RateLimit(rate.starts, rate.window, per_key or rate.per_key)
        return RateLimit.parse(rate, per_key=per_key)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc}") from None


def call_arguments(
    signature: inspect.Signature | None, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The call's arguments by parameter name (positional ones bound to their names,
    defaults filled in)."""
    if signature is None:
        return dict(kwargs)
    bound = signature.bind_partial(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def check_store_enforces(driver: Driver, requests: Sequence[EnqueueRequest]) -> None:
    """Refuse limits a store would not enforce, rather than let it ignore them."""
    if driver.capabilities.flow_control:
        return
    limited = next((request for request in requests if request.flow is not None), None)
    if limited is not None:
        raise InvalidRequest(
            f"cannot enqueue {limited.task} with flow limits: {type(driver).__name__} does not "
            "enforce them (it lacks the flow_control capability)"
        )
