"""TaskHarbor: background jobs and small durable workflows with one strict contract.

``import taskharbor as th`` gives the whole public API::

    app = th.App()                      # embedded SQLite store ./taskharbor.db

    @app.task(max_attempts=5, backoff=th.Backoff.exponential(base=1.0, cap=300.0))
    def send_email(to: str) -> str: ...

    send_email.enqueue("a@example.com")
    th.Worker(app, queues=["default"], concurrency=8).run()

See ``docs/guide.md`` for every feature with a runnable example.
"""

from taskharbor.spec import (
    InvalidRequest,
    InvalidTransition,
    JobNotFound,
    JobState,
    KeyScope,
    LeaseLost,
    OnDead,
    Progress,
    RateLimit,
    StoreError,
    TaskHarborError,
    WorkflowNotFound,
    WorkflowState,
)

from .app import App
from .backoff import Backoff
from .canvas import (
    MemberFailure,
    Signature,
    StepFailure,
    Workflow,
    WorkflowFailed,
    WorkflowHandle,
    WorkflowNotFinished,
    WorkflowStatus,
    chain,
    chord,
    group,
)
from .codec import Codec, DefaultCodec, PayloadError
from .context import JobCancelled, JobContext, PermanentError, Snooze, current_job
from .events import Event
from .jobs import Job
from .middleware import Middleware
from .queues import QueueStatus
from .task import Task, TaskCall
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "Backoff",
    "Codec",
    "DefaultCodec",
    "Event",
    "InvalidRequest",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobNotFound",
    "JobState",
    "KeyScope",
    "LeaseLost",
    "MemberFailure",
    "Middleware",
    "OnDead",
    "PayloadError",
    "PermanentError",
    "Progress",
    "QueueStatus",
    "RateLimit",
    "Signature",
    "Snooze",
    "StepFailure",
    "StoreError",
    "Task",
    "TaskCall",
    "TaskHarborError",
    "Worker",
    "Workflow",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFinished",
    "WorkflowNotFound",
    "WorkflowState",
    "WorkflowStatus",
    "__version__",
    "chain",
    "chord",
    "current_job",
    "group",
]
