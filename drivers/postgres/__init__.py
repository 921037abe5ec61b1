"""The PostgreSQL store (psycopg 3): many workers on many machines, the database's clock."""

from .driver import DatabaseClock, PostgresDriver

__all__ = ["DatabaseClock", "PostgresDriver"]
