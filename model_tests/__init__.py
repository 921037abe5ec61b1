"""Hypothesis stateful tests: a driver and the reference model, step by step.

:func:`driver_state_machine` builds a Hypothesis ``RuleBasedStateMachine``
that applies the same random operations to a fresh store of your driver and
to the reference model (:class:`taskharbor.spec.model.ReferenceModel`), both
reading one :class:`~taskharbor.spec.FakeClock`, and compares after every
step everything the SPI lets anyone observe: every job record, ``count()``,
workflow records, and what each call returned (refused leases, rescued ids,
``promote``'s next due time, errors raised).  Ids and lease tokens may differ
between the two stores; the harness pairs them in creation order.  Any
disagreement, or any broken invariant of the contract, fails with a
:class:`Divergence` that lists what differs, and Hypothesis shrinks the run
to a short sequence of operations.

The operations: enqueue (small batches, colliding idempotency keys, run_at
in the past, now or the future), enqueue_workflow (nested chains, groups and
chords), lease, heartbeat, complete, fail, snooze (with live tokens and stale
ones, favouring tokens of jobs leased again since), cancel, requeue,
cancel_workflow, get, list_jobs (``created_since`` also right at a job's
``created_at``), prune, promote and rescue (also right at the
instant a job falls due or a lease runs out), advancing the clock, and
malformed calls that must be refused without changing anything.  Each rule
runs only when it can matter (no rescue without a running job), and
enqueueing pauses while six jobs are unfinished, so that runs go deep rather
than wide.  Calls run one at a time: races between workers are left to the
conformance suite (``taskharbor.conformance``), and ``wait_for_jobs`` is not
exercised.

Running it against your driver, in a pytest module::

    from hypothesis.stateful import run_state_machine_as_test
    from taskharbor.model_tests import driver_state_machine, hypothesis_settings

    def make_store(clock):                      # a fresh, empty store each time
        return MyDriver("...", clock=clock)

    def test_my_driver_matches_the_model():
        machine = driver_state_machine(make_store)
        run_state_machine_as_test(machine, settings=hypothesis_settings(slow_store=True))

or as a unittest class (Hypothesis's default settings unless you set them)::

    TestMyDriver = driver_state_machine(make_store).TestCase
    TestMyDriver.settings = hypothesis_settings()

The environment variable ``TASKHARBOR_HYPOTHESIS_PROFILE`` chooses how hard
:func:`hypothesis_settings` tries: ``dev`` (default, quick) or ``ci`` (a few
hundred operation sequences).  Only ``ci`` proves a driver: some divergences
need that many sequences to show.  The factory's stores should be cheap to make
and to close (``close()`` is called at the end of every sequence): use a
fresh temporary file or schema each time.
"""

try:
    import hypothesis  # noqa: F401  (the harness is a Hypothesis state machine)
except ImportError as missing:
    raise ImportError(
        "taskharbor.model_tests needs hypothesis: install the extra, "
        "pip install 'taskharbor[conformance]'"
    ) from missing

from .divergence import Divergence
from .machine import DriverFactory, DriverVsModel, driver_state_machine
from .profiles import PROFILE_ENV, PROFILES, Profile, hypothesis_settings
from .workers import WorkersVsModel, workers_state_machine

__all__ = [
    "PROFILES",
    "PROFILE_ENV",
    "Divergence",
    "DriverFactory",
    "DriverVsModel",
    "Profile",
    "WorkersVsModel",
    "driver_state_machine",
    "hypothesis_settings",
    "workers_state_machine",
]
