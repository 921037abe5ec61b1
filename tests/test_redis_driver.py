"""What only the Redis driver could get wrong: JSON its scripts write by hand.

A failure callback's failure (``spec.records.step_failure``) is written by the
script, which reads the dead step's last error out of the stored errors without
decoding them (payloads stay opaque to cjson): awkward text must come through
exactly as reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from driver_registry import redis_store
from taskharbor.spec import (
    EnqueueRequest,
    ErrorReport,
    Failure,
    FakeClock,
    StepSpec,
    WorkflowGraph,
    step_failure,
)

AWKWARD = [
    'a "quoted" message with \\ backslashes \\" and \\\\',
    'looks like the layout: {"attempt":2,"at":"x", "type": "Fake", "message": "no"}',
    "control characters \x01\t\n\x7f and NUL \x00",
    "unicode: é 中文 😀, and a lone surrogate \ud800",
    "",
]


@pytest.mark.parametrize("message", AWKWARD)
def test_a_callback_hears_an_awkward_failure_exactly(tmp_path: Path, message: str) -> None:
    with redis_store(tmp_path) as make:
        driver = make(FakeClock())
        task = 'step "one" \\ é\t😀'
        graph = WorkflowGraph(
            (StepSpec(EnqueueRequest(task)),),
            result=0,
            on_failure=EnqueueRequest("alert", args=("ops",)),
        )
        record = driver.enqueue_workflow(graph)
        assert record.on_failure is not None
        (leased,) = driver.lease(["default"], 1, 30.0, "w-1")
        assert leased.lease_token is not None
        report = ErrorReport('Kind "x" \\', message, traceback='tb "line"\n')
        failure = Failure(leased.id, leased.lease_token, report, permanent=True)
        assert driver.fail([failure]) == []
        dead, callback = driver.get([leased.id, record.on_failure])
        assert dead.errors[-1].message == message
        assert callback.args == (step_failure(record.id, dead), "ops")
        assert callback.args[0]["task"] == task
        assert callback.args[0]["type"] == 'Kind "x" \\'
