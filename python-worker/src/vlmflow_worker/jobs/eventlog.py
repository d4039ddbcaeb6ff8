"""A job's folder and event log: `<artifact_root>/jobs/<quoted job id>/`.

- `job.json`: kind, request type and the worker settings the child needs;
- `request.binpb`: the request, serialized;
- `events.jsonl`: one JobEvent per line (protobuf JSON). One writer at a time: the child while it runs, the
  server before it starts and after it ended. A later attempt of the same id moves the old log to
  `events.<n>.jsonl` first, so every log reads from `accepted` to one terminal event;
- `cancel`: present when a caller asked the job to stop; it holds the reason (`stuck: ...` when the worker
  stopped a silent job).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from google.protobuf import json_format

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import InvalidArgument

EVENTS = "events.jsonl"
CANCEL = "cancel"
STUCK_PREFIX = "stuck:"
MAX_JOB_ID = 200


def job_dir(artifact_root: Path, job_id: str) -> Path:
    """The folder of `job_id`; raises InvalidArgument for an id that cannot name one."""
    if not job_id:
        raise InvalidArgument("job_id is empty: pass an id derived from the workflow id and stage")
    if len(job_id) > MAX_JOB_ID or job_id in (".", ".."):
        raise InvalidArgument(f"job_id {job_id[:40]!r}... must be 1 to {MAX_JOB_ID} characters and not '.' or '..'")
    return artifact_root / "jobs" / quote(job_id, safe="-_.:@=+")


def to_line(event: jobs_pb2.JobEvent) -> str:
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":")) + "\n"


def from_line(line: str) -> jobs_pb2.JobEvent:
    return json_format.ParseDict(json.loads(line), jobs_pb2.JobEvent())


def read_events(path: Path) -> list[jobs_pb2.JobEvent]:
    """Complete lines only: a line cut short by a killed writer is ignored."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [from_line(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def repair_tail(path: Path) -> None:
    """Drops a partial last line (the writer was killed mid-write) so the next append starts a line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append(path: Path, event: jobs_pb2.JobEvent) -> None:
    """Appends one event; durable (fsync) unless it is progress, which the next step replaces anyway: a
    step's fsync would cost more than the step on a fast GPU with a slow artifact store."""
    with open(path, "a") as f:
        f.write(to_line(event))
        f.flush()
        if event.WhichOneof("event") != "progress":
            os.fsync(f.fileno())


def rotate(folder: Path) -> None:
    """Moves the log of an ended attempt aside (events.<n>.jsonl) before a new attempt starts."""
    current = folder / EVENTS
    if not current.exists():
        return
    n = 1
    while (folder / f"events.{n}.jsonl").exists():
        n += 1
    os.replace(current, folder / f"events.{n}.jsonl")


def is_terminal(event: jobs_pb2.JobEvent) -> bool:
    return event.WhichOneof("event") in ("completed", "failed")


def job_state(job_id: str, kind: int, events: list[jobs_pb2.JobEvent], running: bool) -> jobs_pb2.Job:
    """The Job message implied by an event log."""
    job = jobs_pb2.Job(job_id=job_id, kind=kind, state=jobs_pb2.JOB_STATE_RUNNING)
    if events:
        job.create_time.CopyFrom(events[0].time)
        job.update_time.CopyFrom(events[-1].time)
    for event in events:
        which = event.WhichOneof("event")
        if which == "progress":
            if event.progress.step:
                job.step = event.progress.step
            if event.progress.total_steps:
                job.total_steps = event.progress.total_steps
        elif which == "checkpoint_saved":
            job.last_checkpoint_uri = event.checkpoint_saved.uri
            job.step = max(job.step, event.checkpoint_saved.step)
        elif which == "completed":
            job.state = jobs_pb2.JOB_STATE_SUCCEEDED
            job.completed.CopyFrom(event.completed)
        elif which == "failed":
            cancelled = event.failed.reason == jobs_pb2.FAILURE_REASON_CANCELLED
            job.state = jobs_pb2.JOB_STATE_CANCELLED if cancelled else jobs_pb2.JOB_STATE_FAILED
            job.failed.CopyFrom(event.failed)
            if event.failed.last_checkpoint_uri:
                job.last_checkpoint_uri = event.failed.last_checkpoint_uri
    if job.state == jobs_pb2.JOB_STATE_RUNNING and not running:
        job.state = jobs_pb2.JOB_STATE_FAILED
    return job


def new_event(job_id: str, sequence: int, **oneof) -> jobs_pb2.JobEvent:
    event = jobs_pb2.JobEvent(job_id=job_id, sequence=sequence, **oneof)
    event.time.GetCurrentTime()
    return event
