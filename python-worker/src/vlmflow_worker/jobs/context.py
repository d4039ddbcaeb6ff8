"""The handle a job entry uses inside the child process: stream events, notice cancellation."""

from __future__ import annotations

import os
from pathlib import Path

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import Cancelled, Stuck
from vlmflow_worker.jobs import eventlog
from vlmflow_worker.serve.settings import WorkerSettings


class JobContext:
    """Appends events to the job's log (the server tails it). Under torchrun only rank 0 writes."""

    def __init__(self, job_id: str, folder: Path, settings: WorkerSettings) -> None:
        self.job_id = job_id
        self.folder = folder
        self.settings = settings
        self.writes = int(os.environ.get("RANK", "0")) == 0
        self._path = folder / eventlog.EVENTS
        self._sequence = len(eventlog.read_events(self._path))
        self.last_checkpoint_uri = ""
        self.mlflow = None  # the pipeline run's MLflow run when the request asks for one (tracking.open_for)
        from vlmflow_worker import faults  # here, not at the top: the server imports this module, and faults torch

        self._progress_repeat = faults.progress_repeat()

    def resync(self) -> None:
        """Counts the log again: another process (a torchrun launch) appended to it meanwhile."""
        self._sequence = len(eventlog.read_events(self._path))

    def emit(self, **oneof) -> None:
        if not self.writes:
            return
        self._sequence += 1
        eventlog.append(self._path, eventlog.new_event(self.job_id, self._sequence, **oneof))

    def progress(self, phase: str, metrics: dict[str, float] | None = None, **fields) -> None:
        event = jobs_pb2.JobProgress(phase=phase, metrics=metrics or {}, **fields)
        for _ in range(self._progress_repeat):  # 1 unless a test asks for a flood (faults.PROGRESS_REPEAT)
            self.emit(progress=event)

    def checkpoint_saved(self, uri: str, step: int) -> None:
        self.last_checkpoint_uri = uri
        self.emit(checkpoint_saved=jobs_pb2.CheckpointSaved(uri=uri, step=step))

    def log(self, message: str, level: int = jobs_pb2.LOG_LEVEL_INFO) -> None:
        self.emit(log=jobs_pb2.LogLine(level=level, message=message))

    def warning(self, message: str) -> None:
        self.log(message, jobs_pb2.LOG_LEVEL_WARNING)

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        self.emit(eval=jobs_pb2.EvalResult(step=step, metrics=metrics))

    def cancelled(self) -> bool:
        """True once a caller asked the job to stop (a file, so every rank of a multi-process run sees it)."""
        return (self.folder / eventlog.CANCEL).exists()

    def stop_error(self, message: str) -> Cancelled | Stuck:
        """The error a job ends with after it stopped on request: STUCK when the worker stopped it for silence."""
        try:
            why = (self.folder / eventlog.CANCEL).read_text()
        except FileNotFoundError:
            why = ""
        if why.startswith(eventlog.STUCK_PREFIX):
            return Stuck(f"{why}, so the worker stopped it: {message}")
        return Cancelled(message)

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise self.stop_error("the job was cancelled by a caller")
