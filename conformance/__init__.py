"""The conformance suite: one example-based test per rule of the contract.

Every rule of :mod:`taskharbor.spec.spi` and :mod:`taskharbor.spec.lifecycle`
is checked by one test (some parametrised over the states or operations the
rule covers), grouped by area: enqueueing, job metadata (headers, tags, meta,
progress), leasing, fencing,
rule covers), grouped by area: enqueueing, key scopes, job metadata, leasing, fencing,
completing, failing, snoozing, maintenance, operators, reading, finished counts,
bad input,
workflows, waiting, own clock, schedules, workers registry, flow control,
paused queues, field effects, corrupt data, transient failures, transactional
enqueue, processes.  Time is a :class:`~taskharbor.spec.FakeClock` made by each
test, so every timestamp is compared exactly (to the microsecond); only the
own-clock group and the process harnesses run on the driver's default clock.

To prove a driver, subclass :class:`ConformanceSuite` in a test module and
give it a ``driver_factory`` fixture: a callable that takes a clock and
returns a fresh, empty store using that clock::

    import pytest
    from taskharbor.conformance import ConformanceSuite

    class TestMyDriver(ConformanceSuite):
        @pytest.fixture
        def driver_factory(self):
            return lambda clock: MyDriver(clock=clock)

The factory is also called with ``None`` (the tests of
:mod:`~taskharbor.conformance.own_clock`): that asks for a store on the
driver's own default clock, the one it runs on in production, where the
"one instant per call" rules must hold too.

Each test calls the factory once and then ``migrate()`` on the new store;
closing it, if it needs closing, is the factory's business (make the fixture
a generator and close what it made after ``yield``).  Tests that need an
optional ability (see :class:`~taskharbor.spec.Capabilities`) are skipped,
with the reason, for a driver that does not declare it.

Two groups need a hook into the store that only the driver's own tests can
give (:class:`~taskharbor.conformance.harness.DriverHooks`): override the
``plant_corrupt_job`` fixture (damage a stored job's payload) for the
corrupt-data rules, and ``fail_next_call`` (make the next call fail as a lost
connection would) for the transient-failure rules, ``caller_transaction``
(a connection with the application's transaction open) for the
transactional-enqueue rules, and ``open_shared_store``
(open one store from any process) for the multi-process and crash harnesses of
:mod:`~taskharbor.conformance.processes`; without them those tests are
skipped, naming the hook.
"""

from __future__ import annotations

try:
    import pytest  # noqa: F401  (the suite is pytest classes and fixtures)
except ImportError as missing:
    raise ImportError(
        "taskharbor.conformance needs pytest: install the extra, "
        "pip install 'taskharbor[conformance]'"
    ) from missing

from .bad_input import BadInputRules
from .completing import CompletingRules
from .damage import CorruptDataRules, TransientFailureRules
from .effects import FieldEffectRules
from .enqueueing import EnqueueingRules
from .failing import FailingRules
from .failure_callbacks import WorkflowFailureCallbackRules
from .fencing import FencingRules
from .flow import FlowControlRules
from .harness import CallerTransaction, DriverHooks, FailNextCall, Harbor, PlantCorruptJob, requires
from .history import FinishedCountRules
from .key_scopes import KeyScopeRules
from .leasing import LeasingRules
from .maintenance import PromotingRules, PruningRules, RescuingRules
from .metadata import JobMetadataRules, TagsAndMetaRules
from .operators import CancellingRules, RequeueingRules
from .own_clock import OwnClockRules
from .partial_chords import PartialChordRules
from .processes import CrashPlan, FleetPlan, OpenStore, ProcessRules, run_crash, run_fleet
from .progress import ProgressRules
from .queues import QueuePauseRules
from .reading import ReadingRules, WorkflowListingRules
from .schedules import ScheduleDeclarationRules, ScheduleRules
from .snoozing import SnoozingRules
from .transactional import TransactionalEnqueueRules
from .waiting import FinishedWaitingRules, WaitingRules
from .workers import WorkerRegistryRules
from .workflow_keys import WorkflowIdempotencyRules
from .workflows import (
    WorkflowCancellationRules,
    WorkflowDataRules,
    WorkflowFailureRules,
    WorkflowPruningRules,
    WorkflowShapeRules,
)


class ConformanceSuite(
    EnqueueingRules,
    KeyScopeRules,
    JobMetadataRules,
    TagsAndMetaRules,
    ProgressRules,
    LeasingRules,
    FencingRules,
    CompletingRules,
    FailingRules,
    SnoozingRules,
    PromotingRules,
    RescuingRules,
    PruningRules,
    CancellingRules,
    RequeueingRules,
    ReadingRules,
    FinishedCountRules,
    WorkflowListingRules,
    BadInputRules,
    WorkflowShapeRules,
    WorkflowDataRules,
    WorkflowFailureRules,
    WorkflowFailureCallbackRules,
    PartialChordRules,
    WorkflowCancellationRules,
    WorkflowPruningRules,
    WorkflowIdempotencyRules,
    WaitingRules,
    FinishedWaitingRules,
    OwnClockRules,
    CorruptDataRules,
    TransientFailureRules,
    ScheduleRules,
    ScheduleDeclarationRules,
    QueuePauseRules,
    ProcessRules,
    TransactionalEnqueueRules,
    FieldEffectRules,
    FlowControlRules,
    WorkerRegistryRules,
):
    """Every rule of the contract as a test; subclass it with a ``driver_factory`` fixture."""


__all__ = [
    "CallerTransaction",
    "ConformanceSuite",
    "CrashPlan",
    "DriverHooks",
    "FailNextCall",
    "FleetPlan",
    "Harbor",
    "OpenStore",
    "PlantCorruptJob",
    "requires",
    "run_crash",
    "run_fleet",
]
