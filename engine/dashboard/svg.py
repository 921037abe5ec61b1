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
    """Stacked bars per minute: succeeded below, failed (dead) above, cancelled on top."""
    width, height, left, bottom, top = 720, 170, 44, 22, 10
    plot_h = height - bottom - top
    peak = max([b.succeeded + b.failed + b.cancelled for b in buckets] + [1])
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
        shown = ((bucket.succeeded, "ok"), (bucket.failed, "bad"), (bucket.cancelled, "cancelled"))
        for value, css in shown:
            if value:
                h = plot_h * value / peak
                base -= h
                label = (
                    f"{bucket.start:%H:%M} UTC: {bucket.succeeded} succeeded, {bucket.failed} dead"
                    + (f", {bucket.cancelled} cancelled" if bucket.cancelled else "")
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
    """A lifecycle as its transition table says: states in columns by distance from
    ``initial`` (ordered to cross little), one arrow per (source, target) labelled
    with its events; arrows back to an earlier column run in lanes above or below."""
    edges = _edges(table)
    depth = _distances(initial, edges)
    columns: dict[int, list[str]] = {}
    for state in table.states:
        columns.setdefault(depth.get(state, 0), []).append(state)
    rank: dict[str, float] = {}
    for col in sorted(columns):  # each column by the mean row of its earlier neighbours
        members = columns[col]
        for row, state in enumerate(members):
            rank[state] = row
        if col:
            members.sort(key=lambda t: _mean([rank[s] for s, u in edges if u == t and s in rank
                                              and depth.get(s, 0) < col], rank[t]))  # fmt: skip
            for row, state in enumerate(members):
                rank[state] = row
    box_w, box_h, gap_x, gap_y, pad, lane = 120, 34, 140, 44, 24, 24
    rows = max(len(c) for c in columns.values())
    back = [e for e in edges if depth.get(e[1], 0) < depth.get(e[0], 0)]
    up = [e for e in back if rank[e[1]] < (rows - 1) / 2]
    down = [e for e in back if e not in up]
    top = pad + 30 + lane * len(up)
    body = rows * box_h + (rows - 1) * gap_y
    width = pad * 2 + len(columns) * box_w + (len(columns) - 1) * gap_x + 60
    height = top + body + lane * (len(down) + 1) + pad
    where: dict[str, tuple[float, float]] = {}
    for col, members in columns.items():
        offset = (rows - len(members)) * (box_h + gap_y) / 2
        for row, state in enumerate(members):
            where[state] = (pad + 60 + col * (box_w + gap_x), top + offset + row * (box_h + gap_y))
    kind = escape(table.kind)
    parts = [
        f'<svg class="lifecycle" viewBox="0 0 {width} {height:.0f}" role="img" '
        f'aria-label="{kind} lifecycle">',
        f'<defs><marker id="arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>',
    ]
    fan_out = {s: sum(1 for a, _ in edges if a == s) for s in table.states}
    fan_in = {s: sum(1 for _, b in edges if b == s) for s in table.states}
    for (source, target), events in edges.items():
        (x1, y1), (x2, y2) = where[source], where[target]
        anchor = "middle"
        if source == target:  # a loop on the box's right edge
            rx, cy = x1 + box_w, y1 + box_h / 2
            curve = ((rx, cy - 8), (rx + 40, cy - 30), (rx + 40, cy + 30), (rx, cy + 8))
        elif (source, target) in back:
            above = (source, target) in up
            n = (up if above else down).index((source, target))
            sx, tx = x1 + box_w / 2 - 10, x2 + box_w / 2 + 10
            if above:
                y_lane = top - 30 - lane * n
                curve = ((sx, y1), (sx, y_lane), (tx, y_lane), (tx, y2))
            else:
                y_lane = top + body + 30 + lane * n
                curve = ((sx, y1 + box_h), (sx, y_lane), (tx, y_lane), (tx, y2 + box_h))
        elif depth.get(source, 0) == depth.get(target, 0):
            if abs(y2 - y1) > box_h + gap_y:  # past a box between them: bow to the left
                curve = (
                    (x1, y1 + box_h / 2),
                    (x1 - 60, y1),
                    (x2 - 60, y2 + box_h),
                    (x2, y2 + box_h / 2),
                )
            else:  # the next box: straight, downwards left of centre and upwards right of it
                cx = x1 + box_w / 2 + (-18 if y2 > y1 else 18)
                sy, ey = (y1 + box_h, y2) if y2 > y1 else (y1, y2 + box_h)
                curve = ((cx, sy), (cx, sy), (cx, ey), (cx, ey))
                anchor = "end" if y2 > y1 else "start"
        else:
            sx, sy, ex, ey = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
            mid = (sx + ex) / 2
            curve = ((sx, sy), (mid, sy), (mid, ey), (ex, ey))
        at = min(0.7, max(0.3, 0.5 + 0.1 * (fan_out[source] - fan_in[target])))
        if (source, target) in back:
            at = 0.5
        lx, ly = _bezier(curve, at)
        if source == target:
            lx, anchor = lx + 4, "start"
        elif anchor != "middle":
            lx += -5 if anchor == "end" else 5
        (a, b), (c, d), (e, f), (g, h) = curve
        parts.append(
            f'<path class="edge" marker-end="url(#arrow-{kind})" '
            f'd="M{a:.0f},{b:.0f} C{c:.0f},{d:.0f} {e:.0f},{f:.0f} {g:.0f},{h:.0f}"/>'
            f'<text class="edge-label" x="{lx:.0f}" y="{ly - 4:.0f}" text-anchor="{anchor}">'
            f"{escape(', '.join(events))}</text>"
        )
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


def _edges(table: TransitionTable) -> dict[tuple[str, str], list[str]]:
    """(source, target) -> the events that move a subject from one to the other."""
    edges: dict[tuple[str, str], list[str]] = {}
    for event in sorted(table.events):
        for source in table.states:
            for choice in table.options(event, source):
                found = edges.setdefault((source, choice.target), [])
                if event not in found:
                    found.append(event)
    return edges


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


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


Point = tuple[float, float]


def _bezier(curve: tuple[Point, Point, Point, Point], t: float) -> Point:
    """The point at ``t`` of a cubic Bézier curve."""
    (a, b), (c, d), (e, f), (g, h) = curve
    u = 1 - t
    weights = (u**3, 3 * u * u * t, 3 * u * t * t, t**3)
    return (
        sum(w * v for w, v in zip(weights, (a, c, e, g), strict=True)),
        sum(w * v for w, v in zip(weights, (b, d, f, h), strict=True)),
    )
