"""The summary table ``make faults`` prints: one row per scenario run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    scenario: str
    jobs: int
    injected: int
    """Kills, restarts, terminated connections or corrupted rows put in by the test."""
    lost: int
    double_transitions: int
    max_rescue_seconds: float | None
    """The longest wait from a killed attempt to the job's next attempt (None: no rescue)."""


ROWS: list[Row] = []
"""The rows of this pytest session, in the order the scenarios ran."""

HEADER = ("scenario", "jobs", "injected", "lost", "double", "max rescue")


def record(row: Row) -> None:
    ROWS.append(row)


def _cells(row: Row) -> tuple[str, ...]:
    rescue = "-" if row.max_rescue_seconds is None else f"{row.max_rescue_seconds:.2f} s"
    return (
        row.scenario,
        str(row.jobs),
        str(row.injected),
        str(row.lost),
        str(row.double_transitions),
        rescue,
    )


def render(rows: list[Row]) -> str:
    """The rows as a Markdown table (the format docs/guarantees.md quotes)."""
    table = [HEADER, *(_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), rule, *(line(cells) for cells in table[1:])])
