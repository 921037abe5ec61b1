"""The in-memory store: the whole contract in one process, for tests and the testing harness."""

from .driver import MemoryDriver

__all__ = ["MemoryDriver"]
