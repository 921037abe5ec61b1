"""Bad input fuzzed through the public API and the command line.

Each input gets a clear ``TaskHarborError`` or is stored and returned exactly:
task names, payloads (deep nesting, huge strings, NaN, lone surrogates, bytes,
tuples), enqueue options (negative, huge or non-finite delays, naive
datetimes, out-of-range priorities and attempts) and job ids.  The jobs that
were accepted then run on a worker, which must finish every one with its
payload as the result.  The command line answers random arguments with a
one-line error and exit status 1 or 2, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from fault_profile import scaled
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import taskharbor as th
from taskharbor.cli import main as cli
from taskharbor.spec import JobState
from taskharbor.spec.records import JSON_MAX_DEPTH

EXAMPLES = settings(
    max_examples=scaled(60, 400),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

short_text = st.text(st.characters(codec=None), max_size=40)
text = short_text | st.sampled_from(["", " ", "a" * 100_000, "\udcff", "\x00", "név", "😀" * 1000])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
    | st.binary(max_size=8)
    | st.datetimes()
)
payloads = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner)
        | st.dictionaries(text | st.integers(), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=12,
) | st.builds(lambda depth: nested(depth), st.integers(min_value=1, max_value=3000))


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == True`` does not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[th.App]:
    with th.App(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'jobs.db'}") as app:
        yield app


@pytest.fixture(scope="module")
def echo(app: th.App) -> th.Task[Any]:
    @app.task(name="fuzz.echo")
    def echo(*args: Any, **kwargs: Any) -> list[Any]:
        return [list(args), kwargs]

    return echo


@EXAMPLES
@given(args=st.lists(payloads, max_size=3), kwargs=st.dictionaries(text, payloads, max_size=2))
def test_a_payload_is_refused_clearly_or_comes_back_exactly(
    app: th.App, echo: th.Task[Any], args: list[Any], kwargs: dict[str, Any]
) -> None:
    try:
        job = echo.enqueue(*args, **kwargs)
    except th.InvalidRequest as exc:
        assert str(exc).startswith("cannot enqueue fuzz.echo"), exc
        return
    except TypeError:  # a non-str keyword, refused by Python's call syntax itself
        assert not all(isinstance(key, str) for key in kwargs)
        return
    stored = app.get_job(job)
    # Exactly as the app's codec encodes it: plain JSON as given, typed values (a
    # datetime, a tuple) in their JSON form.
    encoded = app.codec.encode
    assert same(list(stored.args), encoded(args)) and same(dict(stored.kwargs), encoded(kwargs))


NO_OPTIONS = dict.fromkeys(["run_at", "priority", "max_attempts", "queue", "key"])


@EXAMPLES
@given(
    delay=st.none() | st.floats() | st.integers() | st.timedeltas() | text,
    run_at=st.none() | st.datetimes() | st.datetimes(timezones=st.just(UTC)),
    priority=st.none() | st.integers() | st.floats() | text,
    max_attempts=st.none() | st.integers() | st.booleans(),
    queue=st.none() | text,
    key=st.none() | text,
)
@example(delay=timedelta(days=2912112), **NO_OPTIONS)  # once an OverflowError
def test_options_are_refused_clearly_or_stored_as_given(
    app: th.App,
    echo: th.Task[Any],
    delay: Any,
    run_at: Any,
    priority: Any,
    max_attempts: Any,
    queue: Any,
    key: Any,
) -> None:
    options = {"delay": delay, "run_at": run_at, "priority": priority}
    options |= {"max_attempts": max_attempts, "queue": queue, "idempotency_key": key}
    try:
        job = echo.options(**options).enqueue()
    except th.InvalidRequest:
        return
    stored = app.get_job(job)
    assert run_at is None or delay is None, "delay and run_at together must be refused"
    if key is not None:  # the key may be an earlier example's: that job is the answer
        assert stored.idempotency_key == key
        return
    given = {"priority": priority, "max_attempts": max_attempts, "queue": queue, "run_at": run_at}
    for name, value in given.items():
        if value is not None:
            assert getattr(stored, name) == value, name


@EXAMPLES
@given(name=text)
@example(name="")  # once silently replaced by the function's name
def test_a_task_name_is_refused_clearly_or_kept(app: th.App, name: str) -> None:
    try:
        task = app.task(name=name)(lambda: None)
    except th.InvalidRequest:
        return
    assert app.get_job(task.enqueue()).task == name


NO_SUCH_ID = st.integers(max_value=0) | st.integers(min_value=2**40)
"""Ids no job has here: never positive, or beyond what this test enqueues."""


@EXAMPLES
@given(job_id=NO_SUCH_ID | st.floats() | text | st.none() | st.booleans() | st.binary())
@example(job_id=2**63)  # once an OverflowError from the SQLite store
def test_a_bad_job_id_is_refused_clearly(app: th.App, job_id: Any) -> None:
    with pytest.raises((th.JobNotFound, th.InvalidRequest)):
        app.get_job(job_id)


def depth(value: Any) -> int:
    """Levels of lists and dicts below ``value``'s top, as ``check_json`` counts them."""
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, list | dict) and children:
        return 1 + max(depth(child) for child in children)
    return 0


def test_every_accepted_job_runs_to_its_payload(app: th.App, echo: th.Task[Any]) -> None:
    """After the fuzzing above, a worker finishes every job it accepted (a new one too):
    with its payload as the result, or, when wrapping the payload two levels deeper
    makes the result deeper than the limit, dead with ``InvalidResult`` naming it."""
    late = echo.enqueue({"n": [1.5, None, True, "\u2028"]}, key="é" * 10_000)
    th.Worker(app, concurrency=4, poll_interval=0.01).run(burst=True, handle_signals=False)
    for job in app.list_jobs(task=echo, limit=10_000):
        if job.queue == "default" and job.run_at <= datetime.now(UTC):
            result = [list(job.args), dict(job.kwargs)]
            if depth(result) <= JSON_MAX_DEPTH:
                assert job.state is JobState.SUCCEEDED, job
                assert same(job.result, result), job
            else:
                assert job.state is JobState.DEAD, job
                assert job.errors[-1].type == "InvalidResult", job.errors
                assert f"nested deeper than {JSON_MAX_DEPTH} levels" in job.errors[-1].message
    assert app.get_job(late).state is JobState.SUCCEEDED


def test_the_depth_limit_counts_each_stored_value_from_its_top() -> None:
    """The fuzz test's rare case, made certain: an argument 63 levels deep is accepted
    (the args list is the 64th level); a result may be 64 levels deep, not 65."""
    app = th.App("memory://")
    same_value = app.task(name="same")(lambda value: value)
    echo = app.task(name="echo")(lambda *args, **kwargs: [list(args), kwargs])
    deepest = app.task(name="deepest")(lambda levels: nested(levels))
    with pytest.raises(th.InvalidRequest, match=f"nested deeper than {JSON_MAX_DEPTH} levels"):
        same_value.enqueue(nested(JSON_MAX_DEPTH))
    with pytest.raises(th.InvalidRequest, match=f"nested deeper than {JSON_MAX_DEPTH} levels"):
        same_value.enqueue(value=nested(JSON_MAX_DEPTH))
    jobs = [
        same_value.enqueue(nested(JSON_MAX_DEPTH - 1)),
        echo.enqueue(nested(JSON_MAX_DEPTH - 1)),
        deepest.enqueue(JSON_MAX_DEPTH),
        deepest.enqueue(JSON_MAX_DEPTH + 1),
    ]
    th.Worker(app, poll_interval=0.01).run(burst=True, handle_signals=False)
    ended = [app.get_job(job) for job in jobs]
    assert [job.state for job in ended] == [
        JobState.SUCCEEDED,
        JobState.DEAD,
        JobState.SUCCEEDED,
        JobState.DEAD,
    ]
    assert same(ended[0].result, nested(JSON_MAX_DEPTH - 1))
    assert same(ended[2].result, nested(JSON_MAX_DEPTH))
    for dead in (ended[1], ended[3]):
        assert [error.type for error in dead.errors] == ["InvalidResult"]
        assert f"nested deeper than {JSON_MAX_DEPTH} levels" in dead.errors[0].message


CLI_WORDS = ["--state", "--limit", "-1", "--older-than", "1e400", "--help", "--json", "0"]
COMMANDS = [
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "cancel"],
    ["jobs", "retry"],
    ["dlq"],
    ["stats"],
    ["prune"],
    ["workflows"],
    ["spec"],
    ["migrate"],
]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store of a few ordinary jobs (the fuzzed one's huge payloads would slow listings)."""
    path = tmp_path_factory.mktemp("cli") / "jobs.db"
    with th.App(f"sqlite:///{path}") as app:
        task = app.task(name="cli.job")(lambda n: n)
        for n in range(3):
            task.enqueue(n)
    return f"sqlite:///{path}"


@settings(EXAMPLES, max_examples=scaled(25, 200))
@given(
    command=st.sampled_from(COMMANDS),
    extra=st.lists(short_text | st.sampled_from(CLI_WORDS), max_size=4),
)
def test_the_cli_answers_bad_arguments_without_a_traceback(
    small_store: str, command: list[str], extra: list[str]
) -> None:
    result = CliRunner().invoke(cli, ["--url", small_store, *command, *extra])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output, result.exception)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), result.exception


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://root:s3cr3t-pw@127.0.0.1:1/test",
        "postgresql://127.0.0.1:1/test?password=s3cr3t-pw",
        "host=127.0.0.1 port=1 password=s3cr3t-pw dbname=test",
    ],
)
def test_the_cli_never_prints_a_password_from_a_url(url: str) -> None:
    for command in (["stats"], ["jobs", "list"], ["migrate"]):
        result = CliRunner().invoke(cli, ["--url", url, *command])
        assert result.exit_code != 0
        assert "s3cr3t-pw" not in result.output, result.output
