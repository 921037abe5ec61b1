"""The SQLite store, the embedded default: one file, safe for several processes on one machine."""

from .driver import SQLiteDriver
from .schema import DatabaseFileError

__all__ = ["DatabaseFileError", "SQLiteDriver"]
