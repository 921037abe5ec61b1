"""``taskharbor jobs``, ``dlq`` and ``workflows`` against every driver, through ``--app``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from test_cli_support import TRACEBACK, CliStore, cli_store, invoke, one_error_line

import taskharbor as th
from taskharbor.cli.jobs import cancellable_states
from taskharbor.cli.render import short_time
from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    UNTIL_FINISHED,
    Completion,
    EnqueueRequest,
    ErrorReport,
    Failure,
    JobState,
    KeyScope,
    LeaseRef,
    Progress,
    StepSpec,
    WorkflowGraph,
    WorkflowState,
)
from taskharbor.spec.table import QUEUED_JOB_STATES

__all__ = ["cli_store"]


def ids(shape: dict[str, object]) -> list[int]:
    jobs = shape["jobs"]
    assert isinstance(jobs, list)
    return [job["id"] for job in jobs]


def test_jobs_list_json_has_every_field_with_iso_datetimes(cli_store: CliStore) -> None:
    (job,) = cli_store.enqueue("tasks.send", queue="mail", priority=5)
    shape = cli_store.json("jobs", "list")
    assert shape["next_after"] is None
    (listed,) = shape["jobs"]
    assert listed["id"] == job.id
    assert listed["task"] == "tasks.send"
    assert listed["queue"] == "mail"
    assert listed["state"] == "available"
    assert listed["priority"] == 5
    assert (listed["attempt"], listed["max_attempts"]) == (0, 3)
    assert listed["args"] == [0] and listed["kwargs"] == {}
    assert datetime.fromisoformat(listed["created_at"]) == job.created_at
    assert datetime.fromisoformat(listed["run_at"]) == job.run_at
    assert listed["finished_at"] is None and listed["lease"] is None
    assert listed["errors"] == [] and listed["workflow_id"] is None


def test_jobs_list_filters_by_state_task_and_queue(cli_store: CliStore) -> None:
    available = cli_store.enqueue("tasks.add", 2)
    dead = cli_store.dead("tasks.flaky", 2)
    done = cli_store.succeeded()
    assert ids(cli_store.json("jobs", "list", "--state", "dead")) == [j.id for j in dead]
    both = cli_store.json("jobs", "list", "--state", "DEAD", "--state", "succeeded")
    assert ids(both) == [j.id for j in dead] + [done.id]
    assert ids(cli_store.json("jobs", "list", "--task", "tasks.add")) == [j.id for j in available]
    assert ids(cli_store.json("jobs", "list", "--queue", "done-source")) == [done.id]
    assert ids(cli_store.json("jobs", "list", "--task", "tasks.add", "--state", "dead")) == []


def test_jobs_list_pages_with_after_and_limit(cli_store: CliStore) -> None:
    jobs = [job.id for job in cli_store.enqueue(count=5)]
    first = cli_store.json("jobs", "list", "--limit", "2")
    assert ids(first) == jobs[:2] and first["next_after"] == jobs[1]
    second = cli_store.json("jobs", "list", "--limit", "2", "--after", str(jobs[1]))
    assert ids(second) == jobs[2:4] and second["next_after"] == jobs[3]
    last = cli_store.json("jobs", "list", "--limit", "2", "--after", str(jobs[3]))
    assert ids(last) == jobs[4:] and last["next_after"] is None
    table = cli_store.ok("jobs", "list", "--limit", "2").stdout
    assert f"more: add --after {jobs[1]}" in table


def test_jobs_list_since_a_duration_or_a_datetime(cli_store: CliStore) -> None:
    old = cli_store.enqueue(count=2)
    cli_store.clock.advance(3 * 3600)
    new = cli_store.enqueue(count=3)
    assert ids(cli_store.json("jobs", "list", "--since", "2h")) == [j.id for j in new]
    assert ids(cli_store.json("jobs", "list", "--since", "4h")) == [j.id for j in old + new]
    since = old[0].created_at.isoformat()
    assert ids(cli_store.json("jobs", "list", "--since", since)) == [j.id for j in old + new]
    paged = cli_store.json("jobs", "list", "--since", "1h", "--limit", "2")
    assert ids(paged) == [new[0].id, new[1].id] and paged["next_after"] == new[1].id
    too_far = cli_store.run("jobs", "list", "--since", "99999999w")
    assert too_far.exit_code == 2
    assert "--since reaches back 699,999,993 days, before the first date" in too_far.stderr


def test_jobs_list_table_fits_80_columns(cli_store: CliStore) -> None:
    cli_store.enqueue("a.rather.long.module.path.to.some_task_with_a_long_name", queue="q" * 30)
    cli_store.dead()
    out = cli_store.ok("jobs", "list").stdout
    assert "available" in out and "dead" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert cli_store.ok("jobs", "list", "--state", "running").stdout.strip() == "no jobs match"


def test_jobs_show_a_dead_job_with_its_errors_and_traceback(cli_store: CliStore) -> None:
    (job,) = cli_store.dead()
    shape = cli_store.json("jobs", "show", str(job.id))
    assert shape["state"] == "dead" and shape["finished_at"] is not None
    (error,) = shape["errors"]
    assert error["attempt"] == 1 and error["type"] == "ValueError"
    assert error["message"] == "no [bold]luck" and error["traceback"] == TRACEBACK
    assert datetime.fromisoformat(error["at"]) == job.errors[0].at
    text = cli_store.ok("jobs", "show", str(job.id)).stdout
    assert "ValueError: no [bold]luck" in text  # shown as written, not as markup
    assert "ValueError: [red]no" in text and "jobs.py" in text


def test_jobs_show_a_running_job_shows_its_lease_but_never_its_token(cli_store: CliStore) -> None:
    (job,) = cli_store.enqueue()
    (leased,) = cli_store.lease_all()
    shape = cli_store.json("jobs", "show", str(job.id))
    assert shape["lease"] == {
        "leased_by": "test-worker",
        "expires_at": leased.lease_expires_at.isoformat() if leased.lease_expires_at else None,
        "cancel_requested": False,
    }
    text = cli_store.ok("jobs", "show", str(job.id)).stdout
    assert "held by test-worker" in text
    assert str(leased.lease_token) not in text + str(shape)


def test_jobs_show_the_idempotency_key_and_how_long_it_is_held(cli_store: CliStore) -> None:
    (window,) = cli_store.enqueue(idempotency_key="daily", key_scope=KeyScope.window(600))
    (unfinished,) = cli_store.enqueue(idempotency_key="once", key_scope=UNTIL_FINISHED)
    (kept,) = cli_store.enqueue(idempotency_key="kept")
    (plain,) = cli_store.enqueue()
    shape = cli_store.json("jobs", "show", str(window.id))
    ends = window.created_at + timedelta(seconds=600)
    assert shape["idempotency_key"] == "daily"
    assert shape["key_scope"] == {"hold": "window", "seconds": 600.0, "ends": ends.isoformat()}
    text = cli_store.ok("jobs", "show", str(window.id)).stdout
    assert f"for 600s from enqueue, until {short_time(ends)}" in text
    assert cli_store.json("jobs", "show", str(unfinished.id))["key_scope"]["hold"] == "unfinished"
    assert "while unfinished" in cli_store.ok("jobs", "show", str(unfinished.id)).stdout
    assert "until pruned" in cli_store.ok("jobs", "show", str(kept.id)).stdout
    assert cli_store.json("jobs", "show", str(plain.id))["key_scope"] is None
    assert "key held" not in cli_store.ok("jobs", "show", str(plain.id)).stdout


def test_jobs_show_result_and_workflow(cli_store: CliStore) -> None:
    done = cli_store.succeeded(result={"sent": 3})
    assert cli_store.json("jobs", "show", str(done.id))["result"] == {"sent": 3}
    assert '{"sent": 3}' in cli_store.ok("jobs", "show", str(done.id)).stdout
    workflow = cli_store.chord()
    callback = cli_store.json("jobs", "show", str(workflow.steps[2]))
    assert callback["workflow_id"] == workflow.id
    assert callback["depends_on"] == list(workflow.steps[:2])
    assert callback["state"] == "pending"
    text = cli_store.ok("jobs", "show", str(workflow.steps[2])).stdout
    assert f"{workflow.id} (this step waits for: {workflow.steps[0]}, {workflow.steps[1]})" in text


def test_jobs_cancel_waiting_and_running_jobs(cli_store: CliStore) -> None:
    first, second = cli_store.enqueue(count=2)
    cli_store.driver.lease(["default"], 1, 60.0, "w")  # the first job is now running
    shape = cli_store.json("jobs", "cancel", str(first.id), str(second.id), str(first.id))
    running, cancelled = shape["jobs"]
    assert (running["id"], running["state"]) == (first.id, "running")
    assert running["lease"]["cancel_requested"] is True
    assert (cancelled["state"], cancelled["reason"]) == ("cancelled", CANCELLED_BY_REQUEST)
    third = cli_store.enqueue()[0]
    text = cli_store.ok("jobs", "cancel", str(third.id)).stdout
    assert f"job {third.id} tasks.add: cancelled" in text


def test_jobs_cancel_of_a_finished_job_changes_nothing(cli_store: CliStore) -> None:
    (waiting,) = cli_store.enqueue()
    done = cli_store.succeeded()
    result = cli_store.run("jobs", "cancel", str(waiting.id), str(done.id))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line == (
        f"Error: job {done.id} is succeeded, and cancel works only on available, dead, "
        "pending, retrying, scheduled jobs (cancelled at once) and running jobs (asked to stop: "
        "they end cancelled when their worker sees the request)"
    )
    assert cli_store.driver.get([waiting.id])[0].state == JobState.AVAILABLE


def test_the_cancellable_states_come_from_the_spec_table() -> None:
    at_once, asked = cancellable_states()
    assert set(at_once) == {*QUEUED_JOB_STATES, JobState.DEAD}
    assert asked == [JobState.RUNNING]


def test_jobs_retry_puts_dead_and_cancelled_jobs_back(cli_store: CliStore) -> None:
    (dead,) = cli_store.dead()
    (cancelled,) = cli_store.driver.cancel([cli_store.enqueue()[0].id])
    shape = cli_store.json("jobs", "retry", str(dead.id), str(cancelled.id))
    assert [(job["id"], job["state"], job["attempt"]) for job in shape["jobs"]] == [
        (dead.id, "available", 0),
        (cancelled.id, "available", 0),
    ]
    assert len(shape["jobs"][0]["errors"]) == 1  # errors are kept


def test_jobs_retry_of_a_job_that_is_not_finished_badly_fails(cli_store: CliStore) -> None:
    (waiting,) = cli_store.enqueue()
    result = cli_store.run("jobs", "retry", str(waiting.id))
    assert result.exit_code == 1
    assert "available" in one_error_line(result)


def test_dlq_list_shows_only_dead_jobs_with_their_last_error(cli_store: CliStore) -> None:
    cli_store.enqueue()
    dead = cli_store.dead("tasks.flaky", 2) + cli_store.dead("tasks.other")
    assert ids(cli_store.json("dlq", "list")) == [j.id for j in dead]
    assert ids(cli_store.json("dlq", "list", "--task", "tasks.other")) == [dead[2].id]
    assert ids(cli_store.json("dlq", "list", "--queue", "default")) == []
    page = cli_store.json("dlq", "list", "--limit", "1", "--after", str(dead[0].id))
    assert ids(page) == [dead[1].id] and page["next_after"] == dead[1].id
    out = cli_store.ok("dlq", "list").stdout
    assert "ValueError: no [bold]luck" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_dlq_requeue_given_ids(cli_store: CliStore) -> None:
    first, second = cli_store.dead(count=2)
    shape = cli_store.json("dlq", "requeue", str(second.id))
    assert shape["dry_run"] is False
    assert [(job["id"], job["state"]) for job in shape["jobs"]] == [(second.id, "available")]
    assert cli_store.driver.get([first.id])[0].state == JobState.DEAD


def test_dlq_requeue_all_or_by_task(cli_store: CliStore) -> None:
    flaky = cli_store.dead("tasks.flaky", 2)
    other = cli_store.dead("tasks.other")
    by_task = cli_store.json("dlq", "requeue", "--task", "tasks.flaky")
    assert ids(by_task) == [j.id for j in flaky]
    assert cli_store.driver.get([other[0].id])[0].state == JobState.DEAD
    everything = cli_store.ok("dlq", "requeue", "--all").stdout
    assert f"requeued 1 job(s): {other[0].id}" in everything
    assert cli_store.json("dlq", "list")["jobs"] == []
    assert "nothing to requeue" in cli_store.ok("dlq", "requeue", "--all").stdout


def test_dlq_requeue_dry_run_changes_nothing(cli_store: CliStore) -> None:
    dead = cli_store.dead(count=2)
    shape = cli_store.json("dlq", "requeue", "--all", "--dry-run")
    assert shape["dry_run"] is True
    assert [(job["id"], job["state"]) for job in shape["jobs"]] == [(j.id, "dead") for j in dead]
    out = cli_store.ok("dlq", "requeue", "--all", "--dry-run").stdout
    assert "would requeue 2 job(s)" in out
    assert {job.state for job in cli_store.driver.get([j.id for j in dead])} == {JobState.DEAD}


def test_dlq_requeue_refuses_jobs_outside_the_dlq(cli_store: CliStore) -> None:
    (dead,) = cli_store.dead("tasks.flaky")
    (waiting,) = cli_store.enqueue()
    result = cli_store.run("dlq", "requeue", str(dead.id), str(waiting.id))
    assert result.exit_code == 1
    assert f"job {waiting.id} is available, not dead" in one_error_line(result)
    wrong_task = cli_store.run("dlq", "requeue", str(dead.id), "--task", "tasks.other")
    assert wrong_task.exit_code == 1
    assert "not tasks.other" in one_error_line(wrong_task)
    assert cli_store.driver.get([dead.id])[0].state == JobState.DEAD


def test_dlq_requeue_needs_a_selection(cli_store: CliStore) -> None:
    nothing = cli_store.run("dlq", "requeue")
    assert nothing.exit_code == 2
    assert "job ids, --task NAME, --queue NAME or --all" in one_error_line(nothing)
    both = cli_store.run("dlq", "requeue", "1", "--all")
    assert both.exit_code == 2
    assert "not both" in one_error_line(both)


def test_dlq_cancel_takes_dead_jobs_out_for_good(cli_store: CliStore) -> None:
    flaky = cli_store.dead("tasks.flaky", 2)
    (other,) = cli_store.dead("tasks.other")
    (waiting,) = cli_store.enqueue()
    refused = cli_store.run("dlq", "cancel", str(other.id), str(waiting.id))
    assert refused.exit_code == 1
    assert "dlq cancel takes only dead jobs" in one_error_line(refused)
    shape = cli_store.json("dlq", "cancel", str(other.id))
    assert [(job["id"], job["state"]) for job in shape["jobs"]] == [(other.id, "cancelled")]
    assert len(shape["jobs"][0]["errors"]) == 1  # errors are kept
    dry = cli_store.ok("dlq", "cancel", "--task", "tasks.flaky", "--dry-run").stdout
    assert "would cancel 2 job(s)" in dry
    assert (
        f"cancelled 2 job(s): {flaky[0].id}, {flaky[1].id}"
        in cli_store.ok("dlq", "cancel", "--all").stdout
    )
    assert cli_store.json("dlq", "list")["jobs"] == []
    assert cli_store.driver.get([waiting.id])[0].state == JobState.AVAILABLE


def test_workflows_show_the_step_tree(cli_store: CliStore) -> None:
    workflow = cli_store.chord()
    shape = cli_store.json("workflows", "show", str(workflow.id))
    assert (shape["id"], shape["name"], shape["state"]) == (workflow.id, "totals", "running")
    assert shape["result"] is None and shape["finished_at"] is None
    assert [(s["id"], s["state"], s["depends_on"]) for s in shape["steps"]] == [
        (workflow.steps[0], "available", []),
        (workflow.steps[1], "available", []),
        (workflow.steps[2], "pending", list(workflow.steps[:2])),
    ]
    tree = cli_store.ok("workflows", "show", str(workflow.id)).stdout
    assert f"workflow {workflow.id} totals" in tree
    assert f"after {workflow.steps[0]}, {workflow.steps[1]}" in tree
    assert max(len(line) for line in tree.splitlines()) <= 80


def test_workflows_show_the_result_once_succeeded(cli_store: CliStore) -> None:
    workflow = cli_store.chord()
    members = cli_store.lease_all()
    assert not cli_store.driver.complete(
        [Completion(job.id, str(job.lease_token), job.args[0]) for job in members]
    )
    (callback,) = cli_store.lease_all()
    assert callback.args == ([1, 2],)
    assert not cli_store.driver.complete([Completion(callback.id, str(callback.lease_token), 3)])
    shape = cli_store.json("workflows", "show", str(workflow.id))
    assert shape["state"] == WorkflowState.SUCCEEDED.value
    assert shape["result"] == 3
    assert datetime.fromisoformat(shape["finished_at"]) == cli_store.clock.now()


LONG_TASK = "shop.orders.fulfilment.send_the_confirmation_email_to_the_customer"
LONG_QUEUE = "mail-transactional-high-priority-europe-west"


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", ["jobs", "dlq"])
def test_listings_keep_one_line_per_job_at_the_terminal_width(
    cli_store: CliStore, width: int, command: str
) -> None:
    """Piped output is as wide as COLUMNS says (80 without it): long task names,
    queues and errors end in an ellipsis; id, state and time stay whole."""
    dead = cli_store.dead(task=LONG_TASK, count=2)
    short = cli_store.dead(task="tasks.add")
    ids = [job.id for job in (*dead, *short)]
    result = invoke(["--app", cli_store.app_path, command, "list"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    rows = lines[2:]  # the header and its rule
    assert len(rows) == len(ids)  # nothing wrapped onto a second line
    died = short_time(cli_store.driver.get([ids[0]])[0].finished_at)
    for row, job_id in zip(rows, ids, strict=True):
        assert row.split()[0] == str(job_id)
        assert died in row
        if command == "jobs":
            assert row.split()[1] == "dead"
    assert "…" in rows[0] and LONG_TASK not in result.stdout
    assert "tasks.add" in rows[2]
    if width == 120:
        assert "ValueError: no [bold]luck" in rows[0] or command == "jobs"


def test_jobs_show_keeps_each_traceback_line_whole(cli_store: CliStore) -> None:
    (job,) = cli_store.enqueue(max_attempts=1)
    (leased,) = cli_store.lease_all()
    deep = "/srv/shop/" + "/".join(f"package_{index}" for index in range(12)) + "/jobs.py"
    lines = [
        "Traceback (most recent call last):",
        f'  File "{deep}", line 123, in send_the_confirmation_email_to_the_customer',
        "ValueError: " + "the mail server answered 421 and closed the connection " * 3,
    ]
    error = ErrorReport("ValueError", "refused", "\n".join(lines))
    assert not cli_store.driver.fail([Failure(job.id, str(leased.lease_token), error)])
    command = ["--app", cli_store.app_path, "jobs", "show", str(job.id)]
    shown = invoke(command, env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.stderr
    printed = shown.stdout.splitlines()
    for line in lines:
        assert line.rstrip() in printed


def test_workflows_show_summarises_the_dependencies_of_a_wide_chord(cli_store: CliStore) -> None:
    members = tuple(StepSpec(EnqueueRequest("tasks.fetch", args=(n,))) for n in range(40))
    total = EnqueueRequest("tasks.total")
    callback = StepSpec(total, after=tuple(range(40)), input=list(range(40)))
    workflow = cli_store.driver.enqueue_workflow(WorkflowGraph((*members, callback), result=40))
    first, last = workflow.steps[0], workflow.steps[39]
    tree = cli_store.ok("workflows", "show", str(workflow.id)).stdout
    deps = ", ".join(str(job_id) for job_id in workflow.steps[:5])
    assert f"after {deps}, … {last} (40 steps)" in tree
    assert str(workflow.steps[20]) not in tree.replace(f"job {workflow.steps[20]} ", "")
    assert max(len(line) for line in tree.splitlines()) <= 80
    shown = cli_store.ok("jobs", "show", str(workflow.steps[40])).stdout
    assert f"this step waits for: {first}, " in shown and "(40 steps)" in shown


def test_workflows_show_prints_the_result_in_the_tree(cli_store: CliStore) -> None:
    workflow = cli_store.chord()
    running = cli_store.ok("workflows", "show", str(workflow.id)).stdout
    assert "result" not in running
    members = cli_store.lease_all()
    assert not cli_store.driver.complete(
        [Completion(job.id, str(job.lease_token), job.args[0]) for job in members]
    )
    (callback,) = cli_store.lease_all()
    done = {"total": 3, "parts": [1, 2]}
    assert not cli_store.driver.complete([Completion(callback.id, str(callback.lease_token), done)])
    tree = cli_store.ok("workflows", "show", str(workflow.id)).stdout
    assert 'succeeded  result: {"total": 3, "parts": [1, 2]}' in tree.splitlines()[0]


def test_workflow_names_come_from_app_enqueue(cli_store: CliStore) -> None:
    app = cli_store.app

    @app.task(name="tasks.add")
    def add(a: int, b: int) -> int:
        return a + b

    handle = app.enqueue(th.chain(add.s(1, 2), add.s(3)), name="nightly-totals")
    assert handle.status().name == "nightly-totals"
    assert cli_store.json("workflows", "show", str(handle.id))["name"] == "nightly-totals"
    tree = cli_store.ok("workflows", "show", str(handle.id)).stdout
    assert tree.startswith(f"workflow {handle.id} nightly-totals")
    assert app.enqueue(th.group(add.s(1, 1))).status().name is None
    with pytest.raises(th.InvalidRequest, match="names a workflow"):
        app.enqueue(add.s(1, 2), name="lonely")
    with pytest.raises(th.InvalidRequest, match="workflow name"):
        app.enqueue(th.chain(add.s(1, 2)), name="")


def test_jobs_list_selects_a_workflow_s_steps(cli_store: CliStore) -> None:
    cli_store.enqueue(count=2)
    workflow = cli_store.chord()
    listed = cli_store.json("jobs", "list", "--workflow", str(workflow.id))
    assert ids(listed) == list(workflow.steps)


def test_dlq_requeue_by_queue(cli_store: CliStore) -> None:
    (dead,) = cli_store.dead()  # queue dlq-source
    (leased,) = cli_store.enqueue("tasks.mail", max_attempts=1, queue="mail")
    (running,) = cli_store.lease_all("mail")
    error = ErrorReport("ValueError", "no")
    assert not cli_store.driver.fail([Failure(leased.id, str(running.lease_token), error)])
    refused = cli_store.run("dlq", "requeue", str(dead.id), "--queue", "mail")
    assert refused.exit_code == 1
    assert f"job {dead.id} is in queue dlq-source, not mail" in one_error_line(refused)
    shape = cli_store.json("dlq", "requeue", "--queue", "mail")
    assert ids(shape) == [leased.id]
    assert cli_store.driver.get([dead.id])[0].state == JobState.DEAD


def test_workflows_cancel(cli_store: CliStore) -> None:
    workflow = cli_store.chord()
    (member,) = cli_store.driver.lease(["default"], 1, 60.0, "test-worker")
    shape = cli_store.json("workflows", "cancel", str(workflow.id))
    assert shape["state"] == WorkflowState.CANCELLED.value
    assert [step["state"] for step in shape["steps"]] == ["running", "cancelled", "cancelled"]
    assert cli_store.driver.get([member.id])[0].cancel_requested
    other = cli_store.chord()
    tree = cli_store.ok("workflows", "cancel", str(other.id)).stdout
    assert tree.startswith(f"workflow {other.id} totals  cancelled")
    refused = cli_store.run("workflows", "cancel", "999")
    assert refused.exit_code == 1 and "workflow 999 not found" in one_error_line(refused)


def test_jobs_list_newest_first_pages_with_before(cli_store: CliStore) -> None:
    jobs = [job.id for job in cli_store.enqueue(count=5)]
    first = cli_store.json("jobs", "list", "--newest-first", "--limit", "2")
    assert ids(first) == [jobs[4], jobs[3]]
    assert (first["next_after"], first["next_before"]) == (None, jobs[3])
    second = cli_store.json(
        "jobs", "list", "--newest-first", "--limit", "2", "--before", str(jobs[3])
    )
    assert ids(second) == [jobs[2], jobs[1]]
    last = cli_store.json("jobs", "list", "--newest-first", "--before", str(jobs[1]))
    assert ids(last) == [jobs[0]] and last["next_before"] is None
    table = cli_store.ok("jobs", "list", "--newest-first", "--limit", "2").stdout
    assert f"more: add --before {jobs[3]}" in table
    assert table.index(f" {jobs[4]} ") < table.index(f" {jobs[3]} ")
    dead = [job.id for job in cli_store.dead(count=2)]
    assert ids(cli_store.json("dlq", "list", "--newest-first")) == dead[::-1]


def test_workflows_list_filters_by_state_and_name_and_pages(cli_store: CliStore) -> None:
    nightly = cli_store.chord()  # named "totals"
    other = cli_store.driver.enqueue_workflow(
        WorkflowGraph((StepSpec(EnqueueRequest("tasks.add")),), result=0, name="nightly-report")
    )
    cancelled = cli_store.chord()
    cli_store.driver.cancel_workflow(cancelled.id)
    listed = cli_store.json("workflows", "list")
    assert [w["id"] for w in listed["workflows"]] == [nightly.id, other.id, cancelled.id]
    assert listed["workflows"][0] == {
        "id": nightly.id,
        "name": "totals",
        "state": "running",
        "created_at": nightly.created_at.isoformat(),
        "finished_at": None,
        "steps": list(nightly.steps),
    }
    by_name = cli_store.json("workflows", "list", "--name", "totals")
    assert [w["id"] for w in by_name["workflows"]] == [nightly.id, cancelled.id]
    by_state = cli_store.json("workflows", "list", "--state", "cancelled")
    assert [w["id"] for w in by_state["workflows"]] == [cancelled.id]
    both = cli_store.json("workflows", "list", "--name", "totals", "--state", "running")
    assert [w["id"] for w in both["workflows"]] == [nightly.id]
    page = cli_store.json("workflows", "list", "--newest-first", "--limit", "2")
    assert [w["id"] for w in page["workflows"]] == [cancelled.id, other.id]
    assert page["next_before"] == other.id
    table = invoke(["--app", cli_store.app_path, "workflows", "list"], env={"COLUMNS": "80"})
    rows = table.stdout.splitlines()
    assert len(rows) == 2 + 3 and max(len(row) for row in rows) <= 80
    assert rows[2].split()[:4] == [str(nightly.id), "totals", "running", "3"]
    assert (
        cli_store.ok("workflows", "list", "--name", "none").stdout.strip() == "no workflows match"
    )
    bad = cli_store.run("workflows", "list", "--state", "pending")
    assert bad.exit_code == 2 and "'pending' is not one of" in one_error_line(bad)


def test_jobs_list_tag_and_show_tags_meta_and_progress(cli_store: CliStore) -> None:
    if not cli_store.driver.capabilities.job_metadata:
        assert "lacks the job_metadata" in cli_store.run("jobs", "list", "--tag", "a").stderr
        return
    (plain,) = cli_store.enqueue()
    (tagged,) = cli_store.enqueue(tags=("billing", "urgent"), meta={"customer": 7, "note": "<b>"})
    assert ids(cli_store.json("jobs", "list", "--tag", "billing")) == [tagged.id]
    assert ids(cli_store.json("jobs", "list", "--tag", "nothing")) == []
    assert plain.id in ids(cli_store.json("jobs", "list"))
    (leased,) = [job for job in cli_store.lease_all() if job.id == tagged.id]
    ref = LeaseRef(leased.id, str(leased.lease_token), Progress(0.425, "425 of 1000 rows"))
    assert not cli_store.driver.heartbeat([ref], 60.0).lost
    shape = cli_store.json("jobs", "show", str(tagged.id))
    assert shape["tags"] == ["billing", "urgent"]
    assert shape["meta"] == {"customer": 7, "note": "<b>"}
    assert shape["progress"] == {"value": 0.425, "message": "425 of 1000 rows"}
    text = cli_store.ok("jobs", "show", str(tagged.id)).stdout
    assert "billing, urgent" in text
    assert "42% 425 of 1000 rows" in text
    assert '"customer": 7' in text
    assert cli_store.json("jobs", "show", str(plain.id))["progress"] is None
