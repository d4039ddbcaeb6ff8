"""What a job kind provides: request validation (in the server) and the entry function (in the child)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmflow_worker.jobs.context import JobContext
    from vlmflow_worker.serve.settings import WorkerSettings


@dataclass
class JobResult:
    """What a successful entry returns; it becomes the `completed` event."""

    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    fingerprint: str = ""


@dataclass(frozen=True)
class JobSpec:
    """One job kind.

    validate(request, settings): runs in the server before anything starts; raises InvalidArgument naming the field.
    run(request, ctx) -> JobResult: runs in the child; raises a WorkerError for a typed failure.
    resume_point(request, settings) -> (step, checkpoint_uri): optional; what the `accepted` event reports.
    """

    request_type: type
    validate: Callable[[Any, WorkerSettings], None]
    run: Callable[[Any, JobContext], JobResult]
    resume_point: Callable[[Any, WorkerSettings], tuple[int, str]] | None = None
