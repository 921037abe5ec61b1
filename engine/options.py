"""Enqueue options: one validation path for ``task.options(...)`` and signatures' options.

Every option is checked when it is given and again, with the payload, when
the request is built, so bad input is refused before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from taskharbor.spec import (
    JSON,
    UNTIL_FINISHED,
    UNTIL_PRUNED,
    Driver,
    EnqueueRequest,
    FlowLimits,
    InvalidRequest,
    KeyScope,
)
from taskharbor.spec.metadata import check_meta, check_tags
from taskharbor.spec.records import check_aware, check_name, check_seconds

from .backoff import Backoff
from .flow import TaskFlow

ENQUEUE_OPTIONS = frozenset(
    {
        "delay",
        "run_at",
        "idempotency_key",
        "unique_for",
        "unique_until",
        "priority",
        "queue",
        "max_attempts",
        "concurrency_key",
        "tags",
        "meta",
    }
)
"""What ``task.options(...)`` accepts; ``None`` for any of them means the task's default."""


@dataclass(frozen=True, slots=True)
class TaskDefaults:
    """Per-task settings given to ``@app.task(...)``.

    ``queue``, ``priority`` and ``max_attempts`` are stored with each job (and
    can be overridden per enqueue), so is ``backoff``'s policy (by which the
    store delays a rescued job); ``timeout`` is applied by the worker, which
    finds it through the job's task name.
    """

    queue: str
    priority: int
    max_attempts: int
    backoff: Backoff
    timeout: float | None
    retry_on: tuple[type[BaseException], ...] = ()
    """When not empty, only exceptions of these types retry; any other fails permanently."""
    no_retry_on: tuple[type[BaseException], ...] = ()
    """Exceptions of these types fail permanently (to the DLQ), like ``PermanentError``."""
    flow: TaskFlow | None = None
    """The task's flow control (concurrency, keys, sequences, rate limits), if any."""
    tags: tuple[str, ...] = ()
    """Tags every job of the task carries (an enqueue's own tags are added after them)."""
    meta: Mapping[str, JSON] = field(default_factory=dict)
    """Meta every job of the task starts from (an enqueue's own keys win)."""
    key_scope: KeyScope | None = None
    """How long a job enqueued with a key holds it (``unique_for``/``unique_until``);
    ``None``: the contract's default, until the job is pruned."""

    def retries(self, error: BaseException) -> bool:
        """Whether a failed attempt that raised ``error`` may be retried, by this task's
        ``retry_on``/``no_retry_on`` (``no_retry_on`` wins when both match)."""
        if isinstance(error, self.no_retry_on):
            return False
        return not self.retry_on or isinstance(error, self.retry_on)


def check_exception_types(value: object, what: str) -> tuple[type[BaseException], ...]:
    """``retry_on``/``no_retry_on``: an exception class or a tuple or list of them."""
    types = tuple(value) if isinstance(value, tuple | list) else (value,)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise InvalidRequest(
                f"{what} must be an exception class or a tuple of them "
                f"(as in {what}=(TimeoutError,)), not {item!r}"
            )
    return types


def check_timeout(value: object) -> float | None:
    """A task timeout: ``None`` (no limit) or a positive finite number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"timeout must be a number of seconds or None, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"timeout must be positive and finite, not {value}")
    return float(value)


def check_options(opts: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The options that were given (``None`` dropped), or a clear error for a bad one."""
    unknown = sorted(set(opts) - ENQUEUE_OPTIONS)
    if unknown:
        raise InvalidRequest(
            f"{where}: unknown enqueue option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(ENQUEUE_OPTIONS))})"
        )
    given = {name: value for name, value in opts.items() if value is not None}
    if "delay" in given and "run_at" in given:
        raise InvalidRequest(f"{where}: give delay or run_at, not both")
    if "delay" in given:
        delay = given["delay"]
        if isinstance(delay, bool) or not isinstance(delay, int | float | timedelta):
            raise InvalidRequest(f"{where}: delay must be seconds or a timedelta, not {delay!r}")
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        try:
            given["delay"] = check_seconds(seconds, "delay")
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
    if "run_at" in given:
        try:
            check_aware(given["run_at"], "run_at")
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
    try:
        if "concurrency_key" in given:
            check_name(given["concurrency_key"], "concurrency_key")
        if "tags" in given:
            given["tags"] = check_tags(given["tags"])
        if "meta" in given:
            check_meta(given["meta"])
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc}") from None
    scope = key_scope_of(given, where)
    if scope is not None:
        given["key_scope"] = scope
    return given


def check_task_labels(
    tags: object, meta: Mapping[str, Any] | None
) -> tuple[tuple[str, ...], dict[str, JSON]]:
    """``@app.task(tags=..., meta=...)``: checked, as a tuple and a private dict."""
    try:
        checked = check_tags(tags)
        if meta is None:
            return checked, {}
        check_meta(meta)
    except InvalidRequest as exc:
        raise InvalidRequest(f"@app.task: {exc}") from None
    return checked, dict(meta)


def check_store_keeps_labels(driver: Driver, requests: Sequence[EnqueueRequest]) -> None:
    """Refuse tags and meta a store would not keep, rather than let it drop them."""
    if driver.capabilities.job_metadata:
        return
    labelled = next((r for r in requests if r.tags or r.meta), None)
    if labelled is not None:
        raise InvalidRequest(
            f"cannot enqueue {labelled.task} with tags or meta: {type(driver).__name__} does "
            "not keep them (it lacks the job_metadata capability)"
        )


def check_store_selects_tags(driver: Driver, tag: str | None) -> None:
    """Refuse a tag filter a store would ignore (listing every job instead)."""
    if tag is not None and not driver.capabilities.job_metadata:
        raise InvalidRequest(
            f"cannot list jobs by tag: {type(driver).__name__} does not keep tags "
            "(it lacks the job_metadata capability)"
        )


def merged_tags(task_tags: tuple[str, ...], call_tags: tuple[str, ...]) -> tuple[str, ...]:
    """The task's tags, then the call's that are not among them, in order."""
    if not call_tags:
        return task_tags
    return task_tags + tuple(tag for tag in call_tags if tag not in task_tags)


UNIQUE_UNTIL = {"pruned": UNTIL_PRUNED, "finished": UNTIL_FINISHED}
"""What ``unique_until`` accepts: the end of a job's hold on its key."""


def key_scope_of(given: Mapping[str, Any], where: str) -> KeyScope | None:
    """The key scope that ``unique_for`` or ``unique_until`` in ``given`` asks for
    (``None`` when neither is given), or ``InvalidRequest`` naming the bad one."""
    window, until = given.get("unique_for"), given.get("unique_until")
    if window is not None and until is not None:
        raise InvalidRequest(f"{where}: give unique_for or unique_until, not both")
    if until is not None:
        if until not in UNIQUE_UNTIL:
            raise InvalidRequest(
                f"{where}: unique_until must be one of {', '.join(map(repr, UNIQUE_UNTIL))}, "
                f"not {until!r}"
            )
        return UNIQUE_UNTIL[until]
    if window is None:
        return None
    if isinstance(window, timedelta):
        window = window.total_seconds()
    try:
        return KeyScope.window(window)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: unique_for: {exc}") from None


def check_store_keeps_scopes(driver: Driver, requests: Sequence[EnqueueRequest]) -> None:
    """Refuse a key scope a store would not keep, rather than let it hold the key longer."""
    if driver.capabilities.key_scopes:
        return
    scoped = next((r for r in requests if r.key_scope != UNTIL_PRUNED), None)
    if scoped is not None:
        raise InvalidRequest(
            f"cannot enqueue {scoped.task} with its key held {scoped.key_scope}: "
            f"{type(driver).__name__} holds every key until its job is pruned "
            "(it lacks the key_scopes capability)"
        )


def build_request(
    task: str,
    defaults: TaskDefaults,
    opts: Mapping[str, Any],
    args: tuple[JSON, ...],
    kwargs: Mapping[str, JSON],
    now: Callable[[], datetime],
    flow: FlowLimits | None = None,
) -> EnqueueRequest:
    """The stored request for one call: the task's defaults, then checked ``opts``;
    ``flow`` is the job's limits (:meth:`~taskharbor.flow.TaskFlow.limits`).

    ``now`` (the driver's clock) is read only for a ``delay``.  Raises
    ``InvalidRequest`` naming the task for a bad option or a non-JSON payload.
    """
    given = check_options(opts, f"task {task}") if opts else {}
    key = given.get("idempotency_key")
    scope = given.get("key_scope", defaults.key_scope) or UNTIL_PRUNED
    if key is None and "key_scope" in given:
        raise InvalidRequest(
            f"task {task}: unique_for and unique_until need an idempotency_key to apply to"
        )
    if key is None:
        scope = UNTIL_PRUNED  # a task's default scope applies to the jobs given a key
    run_at = given.get("run_at")
    if "delay" in given:
        try:
            run_at = now() + timedelta(seconds=given["delay"])
        except OverflowError:
            raise InvalidRequest(
                f"task {task}: a delay of {given['delay']} s ends after the last date there is"
            ) from None
    try:
        return EnqueueRequest(
            task=task,
            args=tuple(args),
            kwargs=dict(kwargs),
            queue=given.get("queue", defaults.queue),
            priority=given.get("priority", defaults.priority),
            run_at=run_at,
            max_attempts=given.get("max_attempts", defaults.max_attempts),
            idempotency_key=key,
            retry=defaults.backoff.policy,
            flow=flow,
            tags=merged_tags(defaults.tags, given.get("tags", ())),
            meta={**defaults.meta, **given["meta"]} if "meta" in given else defaults.meta,
            key_scope=scope,
        )
    except InvalidRequest as exc:
        raise InvalidRequest(f"cannot enqueue {task}: {exc}") from None
