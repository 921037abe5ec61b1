"""The SQLite store's schema and its versioned migrations.

The schema version lives in the ``taskharbor_meta`` table.  :func:`migrate`
applies the missing migration steps in one ``BEGIN IMMEDIATE`` transaction, so
several processes may start at once on a new file.  A file this module does
not recognise is never written to: not SQLite, corrupt, another
application's database, or a schema newer than this version knows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from taskharbor.spec import SchemaError, StoreError
from taskharbor.spec.retry import DEFAULT_RETRY_TEXT

from . import flow, queues, schedules, walk, workers
from .transitions import ALL_STATES, AVAILABLE_ROWS, DUE_ROWS, LEASED_ROWS

META_TABLE = "taskharbor_meta"
_VERSION_KEY = "schema_version"
_SQLITE_HEADER = b"SQLite format 3\x00"


class DatabaseFileError(StoreError):
    """The database file cannot be used: not SQLite, corrupt, another
    application's database, a path that cannot be opened for writing, or a
    failure of the file or its disk during a call (full, I/O error, read-only,
    locked by another process).  The call changed nothing in the store; the
    SQLite error, if any, is chained (``__cause__``)."""


_STORAGE_PROBLEMS: dict[int, str] = {
    sqlite3.SQLITE_FULL: (
        "the disk holding {path} is full (or the file reached its size limit); "
        "the call can succeed once space is freed"
    ),
    sqlite3.SQLITE_IOERR: "reading or writing {path} failed (an I/O error of its disk)",
    sqlite3.SQLITE_READONLY: (
        "cannot write to {path}: the file, its folder or its disk is read-only to this process"
    ),
    sqlite3.SQLITE_CANTOPEN: "cannot open {path} (or its -wal or -shm file beside it)",
    sqlite3.SQLITE_PERM: "the operating system denies access to {path}",
    sqlite3.SQLITE_BUSY: (
        "{path} is locked: another process held its write lock longer than the busy "
        "timeout ({timeout:g} s); the call can be retried"
    ),
    sqlite3.SQLITE_PROTOCOL: "SQLite could not take the locks of {path} (its lock files failed)",
    sqlite3.SQLITE_CORRUPT: "{path} cannot be read as an SQLite database: it is damaged",
    sqlite3.SQLITE_NOTADB: "{path} cannot be read as an SQLite database",
}
"""Plain words for each primary result code that means the file or its disk failed.

Any other code (a syntax error, a constraint, a misuse of the API) is a bug of
the caller or of the driver, not a store problem, and is raised as it is."""


_V1 = (
    f"""
    CREATE TABLE {META_TABLE} (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE workflows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT,
        state TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
    )
    """,
    # step_args / step_input: a workflow step's own args and its input ref
    # (job ids), from which ``args`` is rebuilt at release and requeue.
    f"""
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task TEXT NOT NULL,
        queue TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN {ALL_STATES}),
        args TEXT NOT NULL,
        kwargs TEXT NOT NULL,
        priority INTEGER NOT NULL,
        run_at INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        idempotency_key TEXT,
        lease_token TEXT,
        lease_expires_at INTEGER,
        leased_by TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        result TEXT NOT NULL DEFAULT 'null',
        errors TEXT NOT NULL DEFAULT '[]',
        finished_at INTEGER,
        reason TEXT,
        workflow_id INTEGER REFERENCES workflows (id),
        depends_on TEXT NOT NULL DEFAULT '[]',
        step_args TEXT,
        step_input TEXT
    )
    """,
    f"CREATE INDEX jobs_lease ON jobs (queue, priority DESC, run_at, id) WHERE {AVAILABLE_ROWS}",
    f"CREATE INDEX jobs_due ON jobs (run_at) WHERE {DUE_ROWS}",
    f"CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at) WHERE {LEASED_ROWS}",
    "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX jobs_workflow ON jobs (workflow_id) WHERE workflow_id IS NOT NULL",
    "CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
)

_V3 = (
    # The retry policy each job was enqueued with (taskharbor.spec.retry, as JSON text):
    # a rescue waits by it.  Jobs stored before it get the contract's default policy.
    f"ALTER TABLE jobs ADD COLUMN retry TEXT NOT NULL DEFAULT '{DEFAULT_RETRY_TEXT}'",
)

_V5 = (
    # A workflow's idempotency key: while a workflow holds it, a graph with the same
    # key stores nothing.  Separate from the jobs' keys.
    "ALTER TABLE workflows ADD COLUMN idempotency_key TEXT",
    "CREATE UNIQUE INDEX workflows_idempotency_key ON workflows (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
)

_V6 = (
    # Each job's headers (EnqueueRequest.headers: str to str, as a JSON object), carried
    # for propagation such as a trace context.  Jobs stored before it have none.
    "ALTER TABLE jobs ADD COLUMN headers TEXT NOT NULL DEFAULT '{}'",
)

_V8 = (
    # The job id of a workflow's failure callback: a job of the workflow, not a step.
    "ALTER TABLE workflows ADD COLUMN on_failure INTEGER",
)

_V10 = (
    # A workflow's partial steps and tolerated steps (spec.records.tolerated_steps), as
    # JSON lists of job ids; NULL for a workflow without partial steps.
    "ALTER TABLE workflows ADD COLUMN partial TEXT",
    "ALTER TABLE workflows ADD COLUMN tolerated TEXT",
)

_V11 = (
    # Each job's tags (a JSON array of str) and meta (a JSON object), given at enqueue,
    # and the progress its current or last attempt reported (a JSON array [value,
    # message], NULL before any).  Jobs stored before it have none.
    "ALTER TABLE jobs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE jobs ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'",
    "ALTER TABLE jobs ADD COLUMN progress TEXT",
    # list_jobs(tag=...) reads one tag's jobs, in id order, from here.  The triggers
    # keep it in step with every insert path and with prune; tags never change.
    "CREATE TABLE job_tags (tag TEXT NOT NULL, job_id INTEGER NOT NULL, "
    "PRIMARY KEY (tag, job_id)) WITHOUT ROWID",
    "CREATE TRIGGER job_tags_added AFTER INSERT ON jobs WHEN NEW.tags <> '[]' BEGIN "
    "INSERT INTO job_tags (tag, job_id) SELECT value, NEW.id FROM json_each(NEW.tags); END",
    "CREATE TRIGGER job_tags_removed AFTER DELETE ON jobs WHEN OLD.tags <> '[]' BEGIN "
    "DELETE FROM job_tags WHERE job_id = OLD.id "
    "AND tag IN (SELECT value FROM json_each(OLD.tags)); END",
)

_KEY_SCOPES = (
    # How long each job holds its idempotency key (taskharbor.spec.keys, as scope_text:
    # NULL is the default, until pruned), and the key a job gave up to a newer job.
    # The unique index stays on idempotency_key, which only the key's last taker has:
    # giving a key up moves it to given_up_key, so a lookup by key stays one index probe.
    "ALTER TABLE jobs ADD COLUMN key_scope TEXT",
    "ALTER TABLE jobs ADD COLUMN given_up_key TEXT",
)

_FINISHED_COUNTS = (
    # finished_per_minute reads the finished jobs of a window from here alone (queue and
    # state are in the index: no row is read); it replaces the index on finished_at
    # alone, which prune read, and serves prune the same way.
    "CREATE INDEX jobs_finished_counts ON jobs (finished_at, queue, state) "
    "WHERE finished_at IS NOT NULL",
    "DROP INDEX jobs_finished",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1,
    schedules.MIGRATION,
    _V3,
    flow.MIGRATION,
    _V5,
    _V6,
    queues.MIGRATION,
    _V8,
    workers.MIGRATION,
    _V10,
    _V11,
    _KEY_SCOPES,
    _FINISHED_COUNTS,
    walk.MIGRATION,
)
"""Migration ``n`` (0-based) takes the schema from version ``n`` to ``n + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code reads and writes."""


def check_path(path: Path) -> None:
    """Refuse a path that cannot hold our database, before SQLite opens it."""
    if path.exists():
        if not path.is_file():
            raise DatabaseFileError(f"{path} is not a regular file")
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:
            raise DatabaseFileError(
                f"{path} is not an SQLite database (no SQLite header); refusing to touch it"
            )
    elif not path.parent.is_dir():
        raise DatabaseFileError(f"cannot create {path}: {path.parent} is not a directory")


def stored_version(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of the open file (0 for an empty one).

    Raises :class:`DatabaseFileError` for a corrupt file or another
    application's database, :class:`SchemaError` for a version newer than ours.
    """
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if META_TABLE not in tables:
            others = sorted(tables - {"sqlite_sequence"})
            if others:
                raise DatabaseFileError(
                    f"{path} is an SQLite database but not a TaskHarbor store "
                    f"(it has {', '.join(others)}); refusing to add tables to it"
                )
            return 0
        row = conn.execute(
            f"SELECT value FROM {META_TABLE} WHERE key = ?", (_VERSION_KEY,)
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        if is_storage_failure(exc):
            raise  # named by the driver's connection wrapper, with the others
        raise unusable_file(path, exc) from exc
    if row is None or not str(row[0]).isdigit():
        raise DatabaseFileError(f"{path} has a {META_TABLE} table without a schema version")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema version {version}, newer than {SCHEMA_VERSION}, the newest "
            "this TaskHarbor knows: upgrade TaskHarbor to use it"
        )
    return version


def is_storage_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite raised ``exc`` because the file or its disk failed (not a bug)."""
    return _storage_problem(exc) is not None


def _storage_problem(exc: sqlite3.Error) -> str | None:
    # Errors raised by the sqlite3 module itself (wrong parameter count...) have no code.
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else _STORAGE_PROBLEMS.get(code & 0xFF)


def storage_error(
    path: Path | str, exc: sqlite3.Error, busy_timeout: float
) -> DatabaseFileError | None:
    """The :class:`DatabaseFileError` naming the file and its problem in plain words,
    SQLite's own words after them; ``None`` if ``exc`` is not a failure of the file
    or its disk (``busy_timeout``: the seconds the connection waits for a lock)."""
    problem = _storage_problem(exc)
    if problem is None:
        return None
    name = getattr(exc, "sqlite_errorname", "")
    words = problem.format(path=path, timeout=busy_timeout)
    return DatabaseFileError(f"{words} (sqlite: {exc}; {name})")


def unusable_file(path: Path | str, exc: sqlite3.DatabaseError) -> DatabaseFileError:
    """The error for a file SQLite refused while it was opened and inspected: any error
    then, that is not a failure of the disk, means the file is not a database we can use."""
    return DatabaseFileError(f"{path} cannot be read as an SQLite database: {exc}")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`; idempotent and safe to race.

    The version is read inside the write transaction, so of several processes
    migrating at once one applies the steps and the others find them done.
    """
    stored_version(conn, path)  # refuse foreign or newer files before any write
    # A file we may not write fails here (named by the driver's connection wrapper).
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = stored_version(conn, path)
        for steps in MIGRATIONS[version:]:
            for statement in steps:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(
                f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_VERSION_KEY, str(SCHEMA_VERSION)),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself after some failures
            conn.execute("ROLLBACK")
        raise


def require_current(conn: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`SchemaError` unless the schema is exactly :data:`SCHEMA_VERSION`."""
    version = stored_version(conn, path)
    if version < SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema version {version}, older than {SCHEMA_VERSION}, which this "
            "TaskHarbor needs: run `taskharbor migrate` (or open it with migrate=True)"
        )
