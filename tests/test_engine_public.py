"""The public names of ``import taskharbor as th``: DESIGN.md's, and the errors users catch."""

from __future__ import annotations

import taskharbor as th
from taskharbor import spec

DESIGN_NAMES = (
    "App",
    "Backoff",
    "Job",
    "JobState",
    "PermanentError",
    "Signature",
    "Snooze",
    "Task",
    "TaskCall",
    "Worker",
    "WorkflowHandle",
    "chain",
    "chord",
    "current_job",
    "group",
)


def test_design_names_are_exported() -> None:
    missing = [name for name in DESIGN_NAMES if name not in th.__all__]
    assert not missing


def test_store_error_is_exported_as_the_spec_class() -> None:
    """A store that cannot be reached raises StoreError: users catch it as th.StoreError."""
    assert "StoreError" in th.__all__
    assert th.StoreError is spec.StoreError
    assert issubclass(th.StoreError, th.TaskHarborError)


def test_every_exported_name_exists() -> None:
    assert [name for name in th.__all__ if not hasattr(th, name)] == []
