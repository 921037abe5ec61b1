"""Diagrams and tables of the lifecycles, generated from the spec classes.

Used by ``scripts/gen_diagrams.py`` (the committed files under docs/) and by the
CLI's ``taskharbor spec diagram``.  Output is deterministic.
"""

from __future__ import annotations

from typing import Literal

from .lifecycle import JobLifecycle, WorkflowLifecycle
from .table import JOB, WORKFLOW, Choice, TransitionTable

Lifecycle = Literal["job", "workflow"]
Format = Literal["mermaid", "dot", "table"]

_MACHINES = {"job": (JobLifecycle, JOB), "workflow": (WorkflowLifecycle, WORKFLOW)}
FORMATS: tuple[Format, ...] = ("mermaid", "dot", "table")


def render(lifecycle: Lifecycle, fmt: Format) -> str:
    """The ``lifecycle``'s diagram in ``fmt``: Mermaid, Graphviz DOT, or a Markdown table."""
    if lifecycle not in _MACHINES:
        raise ValueError(f"unknown lifecycle {lifecycle!r} (one of: {', '.join(_MACHINES)})")
    machine, table = _MACHINES[lifecycle]
    if fmt == "mermaid":
        return f"{machine:mermaid}".rstrip() + "\n"
    if fmt == "table":
        return f"{machine:md}".rstrip() + "\n"
    if fmt == "dot":
        return _dot(lifecycle, machine, table)
    raise ValueError(f"unknown format {fmt!r} (one of: {', '.join(FORMATS)})")


def _dot(name: str, machine: type, table: TransitionTable) -> str:
    """Graphviz DOT drawn from the derived table (one edge per event and guard)."""
    lines = [f"digraph {name} {{", "    rankdir=LR;", '    node [shape=box, style="rounded"];']
    initial = next(state.id for state in machine.states if state.initial)  # type: ignore[attr-defined]
    lines.append('    __start [shape=point, label=""];')
    lines.append(f"    __start -> {initial};")
    for state in table.states:
        shape = ", peripheries=2" if state in table.final_states else ""
        lines.append(f'    {state} [label="{state}"{shape}];')
    for event in sorted(table.events):
        for source in table.states:
            for choice in table.options(event, source):
                label = event + _guard_label(choice)
                lines.append(f'    {source} -> {choice.target} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _guard_label(choice: Choice) -> str:
    """`` [a or b]``, `` [unless c or d]``, both, or nothing."""
    parts = []
    if choice.guards:
        parts.append(" or ".join(choice.guards))
    if choice.unless:
        parts.append("unless " + " or ".join(choice.unless))
    return f" [{'; '.join(parts)}]" if parts else ""
