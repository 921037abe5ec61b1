"""SVG drawn on the server: the throughput chart, a workflow's graph, the lifecycles.

Every text that comes from the store goes through :func:`html.escape`; the
result is returned as ``Markup`` so the templates insert it as it is.  Colours
come from CSS classes (``state-<name>``) in the packaged stylesheet: the
content-security policy allows no inline style.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

from taskharbor.spec import JobRecord
from taskharbor.spec.table import TransitionTable

from .throughput import Bucket


def throughput_chart(buckets: Sequence[Bucket]) -> Markup:
    """Stacked bars per minute: succeeded below, failed (dead) above."""
    width, height, left, bottom, top = 720, 170, 44, 22, 10
    plot_h = height - bottom - top
    peak = max([b.succeeded + b.failed for b in buckets] + [1])
    bar_w = (width - left - 4) / max(len(buckets), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="jobs succeeded and failed per minute, last hour">',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width}" y2="{top + plot_h}"/>',
        f'<text class="tick" x="{left - 6}" y="{top + 8}" text-anchor="end">{peak}</text>',
        f'<text class="tick" x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, bucket in enumerate(buckets):
        x = left + i * bar_w + 1
        base = float(top + plot_h)
        for value, css in ((bucket.succeeded, "ok"), (bucket.failed, "bad")):
            if value:
                h = plot_h * value / peak
                base -= h
                label = (
                    f"{bucket.start:%H:%M} UTC: {bucket.succeeded} succeeded, {bucket.failed} dead"
                )
                parts.append(
                    f'<rect class="bar-{css}" x="{x:.1f}" y="{base:.1f}" width="{bar_w - 2:.1f}" '
                    f'height="{h:.1f}"><title>{label}</title></rect>'
                )
    for i, text in ((0, "-60 min"), (30, "-30 min"), (59, "now")):
        x = left + i * bar_w + bar_w / 2
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 6}" text-anchor="middle">{text}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _levels(jobs: Sequence[JobRecord]) -> dict[int, int]:
    """Each step's column: one more than the deepest of its dependencies."""
    level: dict[int, int] = {}
    for job in sorted(jobs, key=lambda j: j.id):  # dependencies have smaller ids
        level[job.id] = 1 + max((level.get(d, 0) for d in job.depends_on), default=-1)
    return level


def workflow_graph(jobs: Sequence[JobRecord], *, link: str = "/jobs/{}") -> Markup:
    """The steps left to right by dependency depth, each box coloured by its state."""
    level = _levels(jobs)
    columns: dict[int, list[JobRecord]] = {}
    for job in sorted(jobs, key=lambda j: j.id):
        columns.setdefault(level[job.id], []).append(job)
    box_w, box_h, gap_x, gap_y, pad = 170, 44, 60, 16, 12
    rows = max((len(c) for c in columns.values()), default=1)
    width = pad * 2 + len(columns) * box_w + max(len(columns) - 1, 0) * gap_x
    height = pad * 2 + rows * box_h + (rows - 1) * gap_y
    where: dict[int, tuple[float, float]] = {}
    for col, members in columns.items():
        offset = (rows - len(members)) * (box_h + gap_y) / 2
        for row, job in enumerate(members):
            where[job.id] = (pad + col * (box_w + gap_x), pad + offset + row * (box_h + gap_y))
    parts = [
        f'<svg class="graph" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="workflow graph">'
    ]
    for job in jobs:
        x2, y2 = where[job.id]
        for dep in job.depends_on:
            if dep not in where:
                continue
            x1, y1 = where[dep]
            sx, sy, ex, ey = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
            mid = (sx + ex) / 2
            parts.append(
                f'<path class="edge" d="M{sx:.0f},{sy:.0f} C{mid:.0f},{sy:.0f} '
                f'{mid:.0f},{ey:.0f} {ex:.0f},{ey:.0f}"/>'
            )
    for job in jobs:
        x, y = where[job.id]
        task = job.task if len(job.task) <= 22 else job.task[:21] + "…"
        parts.append(
            f'<a href="{escape(link.format(job.id))}"><g class="node state-{escape(job.state)}">'
            f"<title>#{job.id} {escape(job.task)}: {escape(job.state)}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="6"/>'
            f'<text x="{x + 8:.0f}" y="{y + 18:.0f}">#{job.id} {escape(task)}</text>'
            f'<text class="sub" x="{x + 8:.0f}" y="{y + 35:.0f}">{escape(job.state)}</text>'
            "</g></a>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def lifecycle_diagram(table: TransitionTable, initial: str) -> Markup:
    """A lifecycle's states in columns by distance from ``initial``, one arrow per
    (source, target) labelled with its events, as the transition table says."""
    edges: dict[tuple[str, str], list[str]] = {}
    for event in sorted(table.events):
        for source in table.states:
            for choice in table.options(event, source):
                edges.setdefault((source, choice.target), [])
                if event not in edges[(source, choice.target)]:
                    edges[(source, choice.target)].append(event)
    depth = _distances(initial, edges)
    columns: dict[int, list[str]] = {}
    for state in table.states:
        columns.setdefault(depth.get(state, 0), []).append(state)
    box_w, box_h, gap_x, gap_y, pad = 110, 34, 110, 44, 24
    rows = max(len(c) for c in columns.values())
    width = pad * 2 + len(columns) * box_w + (len(columns) - 1) * gap_x
    height = pad * 2 + rows * box_h + (rows - 1) * gap_y
    where: dict[str, tuple[float, float]] = {}
    for col, members in columns.items():
        offset = (rows - len(members)) * (box_h + gap_y) / 2
        for row, state in enumerate(members):
            where[state] = (pad + col * (box_w + gap_x), pad + offset + row * (box_h + gap_y))
    parts = [
        f'<svg class="lifecycle" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(table.kind)} lifecycle">',
        f'<defs><marker id="arrow-{escape(table.kind)}" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker>'
        "</defs>",
    ]
    for (source, target), events in edges.items():
        parts.append(_arrow(where[source], where[target], box_w, box_h, events, table.kind))
    for state in table.states:
        x, y = where[state]
        final = " final" if state in table.final_states else ""
        parts.append(
            f'<g class="node state-{escape(state)}{final}">'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="8"/>'
            f'<text x="{x + box_w / 2:.0f}" y="{y + 22:.0f}" text-anchor="middle">'
            f"{escape(state)}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _distances(initial: str, edges: Mapping[tuple[str, str], object]) -> dict[str, int]:
    """Breadth-first distance of each state from the initial one."""
    depth = {initial: 0}
    frontier = [initial]
    while frontier:
        following: list[str] = []
        for state in frontier:
            for source, target in edges:
                if source == state and target not in depth:
                    depth[target] = depth[state] + 1
                    following.append(target)
        frontier = following
    return depth


def _arrow(
    start: tuple[float, float],
    end: tuple[float, float],
    box_w: int,
    box_h: int,
    events: Sequence[str],
    kind: str,
) -> str:
    (x1, y1), (x2, y2) = start, end
    label = escape(", ".join(events))
    marker = f'marker-end="url(#arrow-{escape(kind)})"'
    if (x1, y1) == (x2, y2):  # a self-loop (heartbeat) above the box
        cx, top = x1 + box_w / 2, y1
        return (
            f'<path class="edge" {marker} d="M{cx - 14:.0f},{top:.0f} '
            f"C{cx - 30:.0f},{top - 30:.0f} {cx + 30:.0f},{top - 30:.0f} "
            f'{cx + 14:.0f},{top:.0f}"/>'
            f'<text class="edge-label" x="{cx:.0f}" y="{top - 24:.0f}" text-anchor="middle">'
            f"{label}</text>"
        )
    forward = x2 > x1
    sx = x1 + box_w if forward else x1 + box_w / 2
    sy = y1 + box_h / 2 if forward else (y1 + box_h if y2 >= y1 else y1)
    ex = x2 if forward else x2 + box_w / 2
    ey = y2 + box_h / 2 if forward else (y2 if y2 > y1 else y2 + box_h)
    if forward:
        mid = (sx + ex) / 2
        path = f"M{sx:.0f},{sy:.0f} C{mid:.0f},{sy:.0f} {mid:.0f},{ey:.0f} {ex:.0f},{ey:.0f}"
        lx, ly = mid, (sy + ey) / 2 - 4
    else:  # backwards or within a column: bow below (or above) the boxes
        bow = 46 if ey >= sy else -46
        path = (
            f"M{sx:.0f},{sy:.0f} C{sx:.0f},{max(sy, ey) + bow:.0f} "
            f"{ex:.0f},{max(sy, ey) + bow:.0f} {ex:.0f},{ey:.0f}"
        )
        lx, ly = (sx + ex) / 2, max(sy, ey) + bow * 0.75
    return (
        f'<path class="edge" {marker} d="{path}"/>'
        f'<text class="edge-label" x="{lx:.0f}" y="{ly:.0f}" text-anchor="middle">{label}</text>'
    )
