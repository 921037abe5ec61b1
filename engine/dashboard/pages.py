"""The read-only pages: each reads the store through the SPI and renders a template."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from taskharbor.cli.workers import running_jobs
from taskharbor.spec import Driver, InvalidRequest, JobState, WorkerRecord, WorkflowFilter
from taskharbor.spec.table import JOB, NEW, WORKFLOW, TransitionTable, WorkflowState

from ..options import check_store_selects_tags
from . import svg
from .queries import PAGE_SIZE, SINCE, JobQuery, page_of, queue_summaries, timeline

if TYPE_CHECKING:
    from .app import Dashboard


def overview(board: Dashboard, request: Request) -> Response:
    sample = board.counts()
    now = board.driver.clock.now()
    pausable = board.driver.capabilities.queue_pause
    paused = {r.name: r for r in board.driver.paused_queues()} if pausable else {}
    queues = queue_summaries(board.driver, sample.counts, now, also=paused)
    totals = {state: sum(q.counts[state] for q in queues) for state in JobState}
    chart = board.chart(now)
    return board.renderer.render(
        request,
        "overview.html",
        now=now,
        counted_at=sample.at,
        pausable=pausable,
        paused=paused,
        queues=queues,
        totals=totals,
        chart=svg.throughput_chart(chart.buckets),
        chart_from_store=chart.from_store,
        sampled_since=chart.sampled_since,
        workers=_workers(board.driver),
    )


def workers(board: Dashboard, request: Request) -> Response:
    records = _workers(board.driver)
    return board.renderer.render(
        request,
        "workers.html",
        now=board.driver.clock.now(),
        workers=records,
        jobs=running_jobs(board.driver, records or []),
    )


def _workers(driver: Driver) -> list[WorkerRecord] | None:
    """The registered workers, gone ones too; ``None`` when the store keeps no registry."""
    return driver.list_workers() if driver.capabilities.workers else None


def jobs(board: Dashboard, request: Request) -> Response:
    return _listing(board, request, "jobs.html")


def dlq(board: Dashboard, request: Request) -> Response:
    return _listing(board, request, "dlq.html", JobState.DEAD)


def _listing(
    board: Dashboard, request: Request, template: str, state: JobState | None = None
) -> Response:
    """A page of jobs (of one state when given), with the queues and dead jobs counted."""
    query = JobQuery.parse(request.query_params, state=state)
    check_store_selects_tags(board.driver, query.tag)
    counts = board.counts().counts
    return board.renderer.render(
        request,
        template,
        query=query,
        page=page_of(query, board.driver, board.driver.clock.now()),
        queues=sorted({queue for queue, _ in counts}),
        dead=sum(n for (_, s), n in counts.items() if s == JobState.DEAD),
        since_choices=list(SINCE),
        page_size=PAGE_SIZE,
        keeps_tags=board.driver.capabilities.job_metadata,
    )


def job(board: Dashboard, request: Request) -> Response:
    (record,) = board.driver.get([int(request.path_params["job_id"])])
    graph = None
    if record.workflow_id is not None:
        flow = board.driver.get_workflow(record.workflow_id)
        graph = svg.workflow_graph(board.driver.get(list(flow.steps)))
    return board.renderer.render(
        request,
        "job.html",
        job=record,
        timeline=timeline(record),
        graph=graph,
        can_cancel=JOB.allows("cancel", record.state),
        can_requeue=JOB.allows("requeue", record.state),
    )


def workflows(board: Dashboard, request: Request) -> Response:
    raw = request.query_params.get("before") or ""
    before = int(raw) if raw.isdigit() else None
    raw_state = request.query_params.get("state") or ""
    states = None
    if raw_state in WorkflowState.__members__.values():
        states = frozenset({WorkflowState(raw_state)})
    elif raw_state:
        raise InvalidRequest(f"unknown workflow state {raw_state!r}")
    found = board.driver.list_workflows(
        WorkflowFilter(states=states, before_id=before, newest_first=True, limit=PAGE_SIZE + 1)
    )
    older = found[PAGE_SIZE - 1].id if len(found) > PAGE_SIZE else None
    return board.renderer.render(
        request,
        "workflows.html",
        flows=found[:PAGE_SIZE],
        older=older,
        state=raw_state,
        workflow_states=list(WorkflowState),
    )


def workflow(board: Dashboard, request: Request) -> Response:
    flow = board.driver.get_workflow(int(request.path_params["workflow_id"]))
    steps = board.driver.get(list(flow.steps))
    return board.renderer.render(
        request, "workflow.html", flow=flow, steps=steps, graph=svg.workflow_graph(steps)
    )


def schedules(board: Dashboard, request: Request) -> Response:
    supported = board.driver.capabilities.schedules
    records = board.driver.list_schedules() if supported else []
    return board.renderer.render(request, "schedules.html", supported=supported, records=records)


def contract(board: Dashboard, request: Request) -> Response:
    return board.renderer.render(
        request,
        "contract.html",
        job_diagram=svg.lifecycle_diagram(JOB, NEW),
        workflow_diagram=svg.lifecycle_diagram(WORKFLOW, WorkflowState.RUNNING),
        job_rows=_rows(JOB),
        workflow_rows=_rows(WORKFLOW),
    )


def _rows(table: TransitionTable) -> list[tuple[str, str, str, str]]:
    """(source, event, guards, target) for every choice of the table."""
    return [
        (source, event, " or ".join(choice.guards), choice.target)
        for source in table.states
        for event in sorted(table.events)
        for choice in table.options(event, source)
    ]
