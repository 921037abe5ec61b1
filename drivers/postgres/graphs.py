"""The parameters that store a workflow graph (``statements.insert_workflow``).

Shared by the driver's own transaction and the caller's (sync or async), so
that every way to enqueue a workflow writes the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Json

from taskharbor.spec import JobId, WorkflowGraph, WorkflowState
from taskharbor.spec.records import map_ref, tolerated_steps
from taskharbor.spec.retry import policy_text

from .flow import FLOW_PARAMS, flow_columns, flow_params

ALLOCATE_IDS = (
    "SELECT nextval(%(workflow_ids)s::regclass) AS workflow_id,"
    " ARRAY(SELECT nextval(%(job_ids)s::regclass)"
    "       FROM generate_series(1, %(n)s)) AS job_ids"
)
"""A workflow id and ``%(n)s`` job ids, taken before the insert so that it can refer
to them (a key found held wastes them: ids may skip, never repeat)."""


def id_count(graph: WorkflowGraph) -> int:
    """How many job ids :data:`ALLOCATE_IDS` takes: the steps', and the failure callback's."""
    return len(graph.steps) + (graph.on_failure is not None)


def callback_values(
    graph: WorkflowGraph, allocated: Mapping[str, Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    """The parameters of ``workflows.insert_callback``: the graph's ``on_failure``
    request, with the last id allocated (after the steps')."""
    request = graph.on_failure
    assert request is not None, "only a graph with a failure callback has one to insert"
    return {
        **params,
        "id": max(allocated["job_ids"]),
        "workflow_id": allocated["workflow_id"],
        "task": request.task,
        "queue": request.queue,
        "args": Json(list(request.args)),
        "kwargs": Json(dict(request.kwargs)),
        "priority": request.priority,
        "run_at": request.run_at,
        "max_attempts": request.max_attempts,
        "retry": policy_text(request.retry),
        "headers": Json(dict(request.headers)),
        "tags": list(request.tags),
        "meta": Json(dict(request.meta)),
        **dict(zip(FLOW_PARAMS, flow_columns(request.flow, request.task), strict=True)),
    }


def workflow_values(
    graph: WorkflowGraph, allocated: Mapping[str, Any] | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    """The insert's parameters: ``params`` (the tables' names and now), the ids
    ``allocated`` by :data:`ALLOCATE_IDS`, and one array per column of the steps."""
    assert allocated is not None, "ALLOCATE_IDS returns one row"
    ids: list[JobId] = sorted(allocated["job_ids"])[: len(graph.steps)]
    by_index = dict(enumerate(ids))
    steps = graph.steps
    tolerated = tolerated_steps(steps)
    return {
        **params,
        "workflow_id": allocated["workflow_id"],
        "name": graph.name,
        "key": graph.idempotency_key,
        "state": WorkflowState.RUNNING.value,
        "steps": ids,
        "result": Json(map_ref(graph.result, by_index)),
        "ids": ids,
        "task": [s.request.task for s in steps],
        "queue": [s.request.queue for s in steps],
        "args": [Json(list(s.request.args)) for s in steps],
        "kwargs": [Json(dict(s.request.kwargs)) for s in steps],
        "priority": [s.request.priority for s in steps],
        "run_at": [s.request.run_at for s in steps],
        "max_attempts": [s.request.max_attempts for s in steps],
        "depends_on": [Json([by_index[i] for i in s.after]) for s in steps],
        "input_ref": [None if s.input is None else Json(map_ref(s.input, by_index)) for s in steps],
        "retry": [policy_text(s.request.retry) for s in steps],
        "headers": [Json(dict(s.request.headers)) for s in steps],
        "partial": [s.partial for s in steps],
        "tolerated": [index in tolerated for index in range(len(steps))],
        "tags": [Json(list(s.request.tags)) for s in steps],
        "meta": [Json(dict(s.request.meta)) for s in steps],
        **flow_params([s.request for s in steps]),
    }
