"""The committed diagrams are exactly what the spec classes generate today."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from taskharbor.spec import JOB
from taskharbor.spec.diagrams import render

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gen_diagrams.py"


def test_committed_diagrams_are_up_to_date() -> None:
    outdated = runpy.run_path(str(SCRIPT))["outdated"]
    stale = sorted(str(path) for path in outdated())
    assert stale == [], f"regenerate with `make diagrams`: {stale}"


def test_dot_has_one_edge_per_table_choice() -> None:
    dot = render("job", "dot")
    assert 'running -> dead [label="fail [permanent or attempts_exhausted]"];' in dot
    assert 'running -> retrying [label="lease_expired"];' in dot
    choices = sum(len(JOB.options(event, state)) for event in JOB.events for state in JOB.states)
    assert dot.count(" -> ") == 1 + choices  # the start arrow, then every choice of the table


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render("job", "svg")  # type: ignore[arg-type]
