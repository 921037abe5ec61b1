"""Security: payloads are data, SQL takes values only as parameters, passwords stay hidden.

* No module of the package unpickles, unmarshals or evaluates anything: the
  ``pickle``/``marshal``/``shelve`` modules are never imported, ``eval``,
  ``exec`` and ``compile`` never called (payloads are JSON, read by ``json``).
* SQL is never built with ``%`` or ``str.format``; an f-string or a
  ``psycopg.sql.SQL`` built from a variable may only splice in fixed
  fragments: an upper-case module constant, or one of the :data:`REVIEWED`
  expressions, each checked by hand to hold only identifiers, placeholders
  and fragments written in this package.  A new splice fails this test until
  it is reviewed and listed.
* Hostile text (quotes, comment markers, a ``DROP TABLE``) in every value a
  caller controls is stored and returned exactly, and the tables survive.
* (The CLI's password masking is fuzzed in ``test_fuzz.py``.)
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskharbor as th
from driver_registry import DRIVERS
from taskharbor.spec import JobState, SystemClock

ROOT = Path(__file__).parents[2]
PACKAGE_DIRS = ("engine", "drivers", "spec", "conformance", "model_tests")
SQL = re.compile(r"\b(SELECT|UPDATE|INSERT|DELETE|CREATE|DROP|ALTER|VALUES|WHERE)\b")
FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile"}

REVIEWED: dict[tuple[str, str], str] = {
    ("sqlite/driver.py", "clause"): "the conditions above: fixed columns and ? placeholders",
    ("sqlite/driver.py", "order"): "'ASC' or 'DESC', the two literals of newest_first",
    ("sqlite/driver.py", "marks"): "one ? placeholder per workflow id",
    ("sqlite/walk.py", "after"): "one of the three literal position conditions it loops over",
    ("sqlite/transitions.py", "index"): "the N of a :qN parameter name (an int)",
    ("sqlite/writes.py", "assignments"): "column names from this package, each = ?",
    ("sqlite/workers.py", "where"): "'' or its one caller's literal 'WHERE id IN json_each(?)'",
    ("postgres/flow.py", "sql.SQL(text)"): "the literal lookup and DDL templates of the module",
    ("postgres/enqueue.py", "sql.SQL(run_at)"): "a run_at expression from the literal _SHAPES",
    ("postgres/enqueue.py", "sql.SQL(wake)"): "a pg_notify template from the literal _SHAPES",
    ("postgres/enqueue.py", "_GIVE_UP.format(keys='= %(key)s::text')"): (
        "the literal give-up step, its key compared with a parameter"
    ),
    ("postgres/enqueue.py", "_GIVE_UP.format(keys='IN (SELECT i.idempotency_key FROM input i)')"): (
        "the literal give-up step, its keys those of the statement's input rows"
    ),
    ("postgres/schema.py", "sql.SQL(text)"): "the literal DDL templates listed just above",
    ("postgres/statements.py", "sql.SQL(target)"): "'l.target' or 'e.target': callers' literals",
    ("postgres/statements.py", "sql.SQL(assignments)"): "a template from _FENCED_PARTS",
    ("postgres/statements.py", "sql.SQL(arrays)"): "a template from _FENCED_PARTS",
    ("postgres/statements.py", "sql.SQL(names)"): "a template from _FENCED_PARTS",
    ("postgres/statements.py", "sql.SQL(which)"): "the driver's two literal conditions",
    ("postgres/statements.py", "sql.SQL(hinted)"): "the two literal hint conditions of lease",
    ("postgres/statements.py", "sql.SQL(seen)"): "'' or the literal SEEN_BY_HEARTBEAT clause",
    ("postgres/statements.py", "sql.SQL(_FILTERS[name])"): "literal conditions with %(name)s",
    ("postgres/statements.py", "sql.SQL(_WORKFLOW_FILTERS[name])"): "literal conditions, %(name)s",
    ("postgres/tables.py", "sql.SQL(template)"): "statement templates of postgres/statements.py",
}
"""(path below drivers/, spliced expression) -> why it carries no value into the SQL text."""


def package_files() -> Iterator[Path]:
    for folder in PACKAGE_DIRS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_nothing_is_unpickled_or_evaluated() -> None:
    found = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = {node.func.id} & FORBIDDEN_CALLS
            else:
                continue
            for name in names & (FORBIDDEN_MODULES | FORBIDDEN_CALLS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {name}")
    assert found == []


def is_constant_name(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id.isupper()


def splices(path: Path) -> Iterator[tuple[int, str]]:
    """Every expression spliced into SQL text in ``path``, or built into it unsafely."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.JoinedStr):
            fixed = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if SQL.search(fixed):
                for part in node.values:
                    if isinstance(part, ast.FormattedValue) and not is_constant_name(part.value):
                        yield node.lineno, ast.unparse(part.value)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and SQL.search(str(node.left.value)):
                yield node.lineno, f"% formatting of {ast.unparse(node)[:60]}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            is_text = isinstance(target, ast.Constant) and isinstance(target.value, str)
            if node.func.attr == "format" and is_text and SQL.search(str(target.value)):
                yield node.lineno, f"str.format of {ast.unparse(node)[:60]}"
            if node.func.attr == "SQL" and node.args:
                argument = node.args[0]
                if not (isinstance(argument, ast.Constant) or is_constant_name(argument)):
                    yield node.lineno, f"sql.SQL({ast.unparse(argument)})"


def driver_files() -> list[Path]:
    """Every module of every driver package, however deep."""
    return sorted((ROOT / "drivers").rglob("*.py"))


def driver_path(path: Path) -> str:
    """A driver module's path below drivers/, as REVIEWED names it."""
    return path.relative_to(ROOT / "drivers").as_posix()


def test_sql_takes_values_only_as_parameters() -> None:
    unreviewed = [
        f"drivers/{driver_path(path)}:{line}: {expression}"
        for path in driver_files()
        for line, expression in splices(path)
        if (driver_path(path), expression) not in REVIEWED
    ]
    assert unreviewed == [], "SQL built from something not reviewed as a fixed fragment"


def test_every_reviewed_fragment_is_still_spliced_somewhere() -> None:
    """The review list names only live code, so an entry cannot outlive what it vouched for
    and silently cover a new splice of the same name."""
    spliced = {
        (driver_path(path), expression)
        for path in driver_files()
        for _, expression in splices(path)
    }
    assert sorted(set(REVIEWED) - spliced) == []


HOSTILE = "x'); DROP TABLE jobs; -- \" `t` $1 %s ? :q0 \\"


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_hostile_text_is_stored_as_data(kind: str, tmp_path: Path) -> None:
    with DRIVERS[kind](tmp_path) as factory:
        app = th.App(driver=factory(SystemClock()))
        task = app.task(name=HOSTILE, queue=HOSTILE)(lambda *a, **k: [list(a), k])
        job = task.options(idempotency_key=HOSTILE).enqueue(HOSTILE, **{HOSTILE: [HOSTILE]})
        th.Worker(app, queues=[HOSTILE], poll_interval=0.01).run(burst=True, handle_signals=False)
        stored = app.get_job(job)
        assert (stored.task, stored.queue, stored.idempotency_key) == (HOSTILE,) * 3
        assert stored.state is JobState.SUCCEEDED
        assert stored.result == [[HOSTILE], {HOSTILE: [HOSTILE]}]
        assert [j.id for j in app.list_jobs(task=HOSTILE, queue=HOSTILE)] == [job.id]


def test_the_scan_catches_sql_built_with_values(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "def f(conn, name, sql):\n"
        "    conn.execute(f\"SELECT * FROM jobs WHERE task = '{name}'\")\n"
        '    conn.execute("DELETE FROM jobs WHERE id = %s" % name)\n'
        '    conn.execute("UPDATE jobs SET x = {}".format(name))\n'
        '    sql.SQL("SELECT " + name)\n'
    )
    assert sorted(line for line, _ in splices(planted)) == [2, 3, 4, 5]
