"""The one failure the harness reports."""

from __future__ import annotations


class Divergence(AssertionError):
    """The driver under test and the reference model disagree, or a store broke an invariant.

    An ``AssertionError`` so that Hypothesis treats it as a test failure and
    shrinks the sequence of operations that led to it.
    """
