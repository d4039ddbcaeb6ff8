"""The server side of jobs: start or attach by job id, supervise the child, stream its events, cancel.

Capacity: each job slot owns its GPUs (`devices.py`): a job is given free GPUs when it starts, its child process sees
only them (CUDA_VISIBLE_DEVICES), and they are free again when its process has ended. A start beyond the capacity is
refused (UNAVAILABLE) naming the running jobs and their GPUs; nothing is queued here, because Temporal already
queues: the GPU activity worker's concurrency equals the capacity Health reports, and a refused activity is retried.

Detaching (a caller's stream ends or is cancelled) never stops a job: a retried activity attaches to it again.
Stopping is explicit, through CancelJob. Each request names its watcher (the run waiting for the job); a job that
several runs share (a reused stage) is stopped only when its last watcher cancels. Watchers are files in the job
folder (`watchers/`), so they outlive this process.

Stuck jobs: a job that sends no event for `job_stuck_after_s` is asked to checkpoint and stop, killed after
`job_cancel_grace_s`, and ends typed STUCK, so the caller's retry resumes it from its newest checkpoint. Until its
first event a job process is starting (interpreter, torch and transformers imports, which on a loaded host take
longer than a short limit): it is given at least STARTUP_SILENCE_S then, so a slow start is not taken for a hang.

Many hosts, one store: a job has one owner, the worker holding its lease (`lease.py`). A request for a job another
live worker owns attaches to it through the store: its event log is followed, cancel is the `cancel` file its
owner's job process reads. When that owner is gone (its lease stops moving), the follower ends the log with a
failure, and the caller's retry starts the next attempt here, from the newest checkpoint. Never two trainings.

Fast starts: job processes are forked from the worker's fork server (`forkserver.py`), which imports torch,
transformers and each job kind's module once, instead of every job importing them again (seconds of CPU each); the
server imports the job kinds' modules in a thread when the first job starts, for the next request's validation. A
worker that never runs a job pays for neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from vlmflow.v1 import jobs_pb2
from vlmflow_worker import devices, heavy_imports
from vlmflow_worker.errors import FailedPrecondition, NotFound, WorkerBusy
from vlmflow_worker.jobs import eventlog, forkserver, lease
from vlmflow_worker.jobs.child import failure
from vlmflow_worker.jobs.kinds import ENTRY_MODULES
from vlmflow_worker.serve.metrics import WorkerMetrics
from vlmflow_worker.serve.settings import WorkerSettings

log = logging.getLogger("vlmflow.jobs")
WATCHERS = "watchers"


def _import_job_modules() -> None:
    """Imports what validating a request of each kind needs, so the first Train request does not wait seconds."""
    for module in ENTRY_MODULES.values():
        try:
            heavy_imports.import_module(module)
        except Exception:
            log.warning("could not import a job module ahead of use", extra={"module": module}, exc_info=True)


def _num_processes(request) -> int:
    """training.num_processes of a Train request (a multi-GPU job); 1 for every other kind."""
    training = getattr(request, "training", None)
    return max(1, training.num_processes) if training is not None else 1


# How long a job process may be silent before its first event (see the module docstring).
STARTUP_SILENCE_S = 300.0


def silence_limit_s(stuck_after_s: float, started: bool) -> float:
    """The silence after which a job is stuck: the configured limit, but at least STARTUP_SILENCE_S while the job
    process has not yet sent its first event."""
    return stuck_after_s if started else max(stuck_after_s, STARTUP_SILENCE_S)


@dataclass
class JobRecord:
    job_id: str
    kind: int
    folder: Path
    events: list[jobs_pb2.JobEvent] = field(default_factory=list)
    process: asyncio.subprocess.Process | forkserver.ForkedProcess | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_deadline: float | None = None
    stuck_for_s: float | None = None  # set when the job was declared stuck after this many silent seconds
    owner: lease.Watch | None = None  # set while another worker (another host, or an earlier process) runs it

    @property
    def running(self) -> bool:
        return self.process is not None or self.owner is not None

    @property
    def local(self) -> bool:
        """Run by a job process of this worker."""
        return self.process is not None

    @property
    def ended(self) -> bool:
        return bool(self.events) and eventlog.is_terminal(self.events[-1])

    def job(self) -> jobs_pb2.Job:
        job = eventlog.job_state(self.job_id, self.kind, self.events, self.running)
        if self.running:
            job.watchers.extend(watchers(self.folder))
        return job


def watchers(folder: Path) -> list[str]:
    try:
        return sorted(unquote(p.name) for p in (folder / WATCHERS).iterdir())
    except FileNotFoundError:
        return []


def add_watcher(folder: Path, watcher: str) -> None:
    if watcher:
        (folder / WATCHERS).mkdir(exist_ok=True)
        (folder / WATCHERS / quote(watcher, safe="")).touch()


def remove_watcher(folder: Path, watcher: str) -> None:
    (folder / WATCHERS / quote(watcher, safe="")).unlink(missing_ok=True)


class JobRegistry:
    def __init__(
        self,
        settings: WorkerSettings,
        capacity: int,
        poll_s: float = 0.1,
        slots: devices.GpuSlots | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()  # jobs started, running, waiting and ended; training steps
        # Which job holds which GPUs; without a GPU list (CPU), `capacity` jobs at once.
        self.slots = slots or devices.GpuSlots([], job_capacity=capacity)
        self.cancel_grace_s = settings.job_cancel_grace_s
        self.stuck_after_s = settings.job_stuck_after_s
        self.lease_s = settings.job_lease_s
        self.poll_s = poll_s
        self._renewing: asyncio.Task | None = None
        self._lease_watches: dict[str, lease.Watch] = {}  # leases of ended jobs seen held, to take when they stop
        self._jobs: dict[str, JobRecord] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._forkserver = forkserver.ForkServer(self._child_env(None)) if forkserver.wanted() else None
        self._modules_imported = False

    # ---- lookup ----

    def get(self, job_id: str) -> JobRecord | None:
        """The job from memory while it runs (here or elsewhere), else from its folder: on a shared store another
        worker may have run a new attempt since this one last looked."""
        known = self._jobs.get(job_id)
        if known is not None and known.running:
            return known
        folder = eventlog.job_dir(self.settings.artifact_root, job_id)
        try:
            meta = json.loads((folder / "job.json").read_text())
        except (OSError, ValueError):
            return None
        record = JobRecord(job_id, meta["kind"], folder, eventlog.read_events(folder / eventlog.EVENTS))
        if not record.ended:
            owner = lease.Watch(self.lease_s)
            if owner.owner_alive(folder):
                record.owner = owner  # another worker runs it: follow it through the store
                record.events = []  # _follow relays the whole log, as watchers expect
                self._start_task(self._follow(record))
                self._jobs[job_id] = record
                return record
            self._end_orphan(record, "the worker stopped")
        record.done.set()  # no process runs it
        self._jobs[job_id] = record
        return record

    def _end_orphan(self, record: JobRecord, why: str) -> None:
        """Ends the log of a job whose owner is gone, once, under a lease (so no two workers write it)."""
        lease.break_stale(record.folder)
        if not lease.take(record.folder):
            return  # another worker is taking it over right now: it writes the log
        try:
            record.events = eventlog.read_events(record.folder / eventlog.EVENTS)
            if not record.ended:
                eventlog.repair_tail(record.folder / eventlog.EVENTS)
                message = f"{why} while this job ran; start it again with the same job id to resume"
                checkpoint = record.job().last_checkpoint_uri
                self._append_failure(record, failure(jobs_pb2.FAILURE_REASON_INTERNAL, message, checkpoint=checkpoint))
        finally:
            lease.release(record.folder)

    def require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise NotFound(f"no job with id {job_id!r} on this worker")
        return record

    def running(self) -> list[JobRecord]:
        """The jobs this worker's processes run (what its capacity counts)."""
        return [r for r in self._jobs.values() if r.local]

    def list(self, state: int = 0, kind: int = 0) -> list[jobs_pb2.Job]:
        root = self.settings.artifact_root / "jobs"
        if root.is_dir():
            for folder in root.iterdir():
                if (folder / "job.json").exists():
                    self.get(unquote(folder.name))
        jobs = [r.job() for r in self._jobs.values()]
        jobs = [j for j in jobs if (not state or j.state == state) and (not kind or j.kind == kind)]
        return sorted(jobs, key=lambda j: (j.create_time.seconds, j.create_time.nanos), reverse=True)

    # ---- start / attach ----

    async def start_or_attach(self, job_id: str, kind: int, request) -> tuple[JobRecord, bool]:
        """Returns (record, attached). A running or succeeded job is attached to; any other ended job starts a
        new attempt (which resumes from its checkpoints)."""
        async with self._lock:
            record = self.get(job_id)
            if record is not None:
                if record.kind != kind:
                    raise FailedPrecondition(
                        f"job_id {job_id!r} already names a {jobs_pb2.JobKind.Name(record.kind)} job; "
                        f"use a different id for this {jobs_pb2.JobKind.Name(kind)} job"
                    )
                if record.running or record.job().state == jobs_pb2.JOB_STATE_SUCCEEDED:
                    if record.running:
                        add_watcher(record.folder, request.watcher)
                    return record, True
            try:
                gpus = self.slots.assign(job_id, self.slots.wanted(_num_processes(request)))
            except WorkerBusy:
                self.metrics.job_refused(job_id, kind)
                raise
            folder = eventlog.job_dir(self.settings.artifact_root, job_id)
            folder.mkdir(parents=True, exist_ok=True)
            if not self._claim(folder):
                # Another worker took the job between our look and now: attach to it instead.
                self.slots.release(job_id)
                record = self.get(job_id)
                if record is None or not record.running:
                    raise WorkerBusy(
                        f"job {job_id!r} is held by another worker's lease; retry to attach to it, or to take it "
                        f"over once that lease has not moved for {self.lease_s:.0f} s"
                    )
                add_watcher(record.folder, request.watcher)
                return record, True
            try:
                if self.slots.lends_inference(gpus):
                    # Empties the server's model cache (waiting for a load in progress) before the job takes the GPU.
                    await asyncio.to_thread(devices.inference_gate.lend, job_id, gpus[0].index)
                record = await self._spawn(job_id, kind, request, gpus)
            except BaseException:
                self._free_gpus(job_id)
                lease.release(folder)
                raise
            self._jobs[job_id] = record
            self._start_renewing()
            return record, False

    async def _spawn(self, job_id: str, kind: int, request, gpus: list[devices.Gpu]) -> JobRecord:
        folder = eventlog.job_dir(self.settings.artifact_root, job_id)
        folder.mkdir(parents=True, exist_ok=True)
        eventlog.rotate(folder)
        (folder / eventlog.CANCEL).unlink(missing_ok=True)
        shutil.rmtree(folder / WATCHERS, ignore_errors=True)  # an earlier attempt's watchers are not this one's
        add_watcher(folder, request.watcher)
        settings = {
            "artifact_root": str(self.settings.artifact_root),
            "data_roots": [str(p) for p in self.settings.data_roots],
            "allow_user_rewards": self.settings.allow_user_rewards,
        }
        meta = {"job_id": job_id, "kind": kind, "request_type": request.DESCRIPTOR.full_name, "settings": settings}
        if self.slots.gpus:  # the job's own GPUs; a spare job process reads them from here (child.py)
            meta["gpus"] = [g.index for g in gpus]
            meta["cuda_visible_devices"] = devices.cuda_visible_devices(gpus)
        (folder / "job.json").write_text(json.dumps(meta, indent=2) + "\n")
        (folder / "request.binpb").write_bytes(request.SerializeToString())
        process: asyncio.subprocess.Process | forkserver.ForkedProcess | None = None
        if self._forkserver is not None:
            process = await self._forkserver.start_job(folder, ENTRY_MODULES.get(kind, "vlmflow_worker.models"))
        if process is None:
            with open(folder / "child.log", "ab") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "vlmflow_worker.jobs.child",
                    str(folder),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self._child_env(gpus),
                )
        (folder / "child.pid").write_text(f"{process.pid}\n")
        log.info(
            "job started",
            extra={
                "job_id": job_id,
                "kind": jobs_pb2.JobKind.Name(kind),
                "pid": process.pid,
                "gpus": [g.index for g in gpus],
            },
        )
        record = JobRecord(job_id, kind, folder, process=process)
        self.metrics.job_started(job_id, kind)
        self._start_task(self._supervise(record))
        await self._prewarm()
        return record

    def _claim(self, folder: Path) -> bool:
        """Takes the job's lease: a free one, or one whose owner is gone (watched across calls)."""
        if lease.take(folder):
            self._lease_watches.pop(str(folder), None)
            return True
        watch = self._lease_watches.setdefault(str(folder), lease.Watch(self.lease_s))
        if watch.owner_alive(folder):
            return False
        self._lease_watches.pop(str(folder), None)
        return lease.break_stale(folder) and lease.take(folder)

    def _start_task(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_renewing(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        """Keeps this worker's leases moving; a job whose lease is gone or someone else's is stopped (fencing)."""
        while self.running():
            await asyncio.sleep(self.lease_s / 3)
            for record in self.running():
                renewed = await asyncio.to_thread(lease.renew, record.folder)
                if not renewed and record.cancel_deadline is None:
                    log.error("job lease lost to another worker; stopping the job", extra={"job_id": record.job_id})
                    self._request_stop(record, "the lease on this job was lost to another worker")

    def _child_env(self, gpus: list[devices.Gpu] | None) -> dict[str, str]:
        """The job's environment: on a GPU worker it sees only its own GPUs (`gpus`), and the fork server (gpus None)
        none, so its imports cannot touch a GPU another job owns (a forked job names its own, child.use_job_gpus)."""
        env = {**os.environ, "VLMFLOW_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        if self.slots.gpus:
            env["CUDA_VISIBLE_DEVICES"] = devices.cuda_visible_devices(gpus or [])
        return env

    def _free_gpus(self, job_id: str) -> list[devices.Gpu]:
        gpus = self.slots.release(job_id)
        if self.slots.lends_inference(gpus):
            devices.inference_gate.take_back(job_id)
        return gpus

    async def _prewarm(self) -> None:
        """Once, imports the job kinds' modules in a thread, for the next requests' validation."""
        if not self._modules_imported:
            self._modules_imported = True
            asyncio.get_running_loop().run_in_executor(None, _import_job_modules)

    async def _supervise(self, record: JobRecord) -> None:
        """Relays the child's log lines to watchers; records a failure when the child dies without one."""
        assert record.process is not None
        path = record.folder / eventlog.EVENTS
        offset = 0
        exited = asyncio.ensure_future(record.process.wait())
        loop = asyncio.get_running_loop()
        last_event_at = loop.time()
        started = False  # the job process has sent its first event
        while True:
            finished = exited.done()  # read after exit too, so no line written before it is missed
            new_offset = await self._relay(record, path, offset)
            if finished:
                break
            now = loop.time()
            if new_offset != offset:
                offset, last_event_at, started = new_offset, now, True
            if record.cancel_deadline is None and (record.folder / eventlog.CANCEL).exists():
                # Cancelled through the store (by a worker that follows this job): the same grace, then a kill.
                record.cancel_deadline = now + self.cancel_grace_s
            if self._is_stuck(record, now - last_event_at, started):
                record.stuck_for_s = now - last_event_at
                log.warning(
                    "job sent no event; declaring it stuck",
                    extra={"job_id": record.job_id, "silent_s": round(record.stuck_for_s, 1)},
                )
                self._request_stop(record, f"stuck: no event for {record.stuck_for_s:.0f} s")
            if record.cancel_deadline is not None and now > record.cancel_deadline:
                log.warning("job did not stop after cancel; killing it", extra={"job_id": record.job_id})
                record.process.kill()
                record.cancel_deadline = None
            await asyncio.wait([exited], timeout=self.poll_s)
        code = exited.result()
        if not record.ended:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            cancelled = (record.folder / eventlog.CANCEL).exists()
            reason = jobs_pb2.FAILURE_REASON_CANCELLED if cancelled else jobs_pb2.FAILURE_REASON_INTERNAL
            message = (
                f"the job process {how} before reporting a result (out of host memory, a crash, or a kill); "
                "start it again with the same job id to resume from the last checkpoint"
            )
            if record.stuck_for_s is not None:
                reason = jobs_pb2.FAILURE_REASON_STUCK
                message = (
                    f"the job sent no event for {record.stuck_for_s:.0f} s (a hang: deadlock, stalled I/O) and did "
                    f"not stop within {self.cancel_grace_s:.0f} s of being asked, so it was killed; start it again "
                    "with the same job id to resume from the last checkpoint (VLMFLOW_JOB_STUCK_SECONDS sets the "
                    "limit)"
                )
            eventlog.repair_tail(path)
            record.events = eventlog.read_events(path)
            self._append_failure(record, failure(reason, message, checkpoint=record.job().last_checkpoint_uri))
        gpus = self._free_gpus(record.job_id)
        self.metrics.job_ended(record.job_id, record.kind, record.events[-1] if record.ended else None)
        log.info("job ended", extra={"job_id": record.job_id, "exit_code": code, "gpus_freed": [g.index for g in gpus]})
        lease.release(record.folder)
        record.process = None
        async with record.changed:
            record.changed.notify_all()
        record.done.set()

    async def _follow(self, record: JobRecord) -> None:
        """Relays the log of a job another worker runs, until it ends, or until its owner is gone: then ends it."""
        assert record.owner is not None
        path = record.folder / eventlog.EVENTS
        offset = 0
        while not record.ended:
            offset = await self._relay(record, path, offset)
            if record.ended:
                break
            if not await asyncio.to_thread(record.owner.owner_alive, record.folder):
                log.warning("the worker running this job is gone", extra={"job_id": record.job_id})
                why = f"the worker stopped (its lease on the shared store did not move for {self.lease_s:.0f} s)"
                await asyncio.to_thread(self._end_orphan, record, why)
                record.events = eventlog.read_events(path)
                break
            await asyncio.sleep(max(self.poll_s, 0.5))
        record.owner = None
        async with record.changed:
            record.changed.notify_all()
        record.done.set()

    async def _relay(self, record: JobRecord, path: Path, offset: int) -> int:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        complete = data[: data.rfind(b"\n") + 1]
        if not complete:
            return offset
        events = [eventlog.from_line(line) for line in complete.decode().splitlines() if line.strip()]
        if record.local:  # a job another worker runs is that worker's to count
            self.metrics.job_events(record.job_id, record.kind, events)
        async with record.changed:
            record.events.extend(events)
            record.changed.notify_all()
        return offset + len(complete)

    def _is_stuck(self, record: JobRecord, silent_s: float, started: bool) -> bool:
        return (
            self.stuck_after_s > 0
            and silent_s > silence_limit_s(self.stuck_after_s, started)
            and record.stuck_for_s is None
            and record.cancel_deadline is None  # already stopping
        )

    def _request_stop(self, record: JobRecord, reason: str) -> None:
        """Asks the job to checkpoint and stop (a file every rank sees); it is killed if it has not by the deadline."""
        if record.cancel_deadline is None:
            (record.folder / eventlog.CANCEL).write_text(reason)
            record.cancel_deadline = asyncio.get_running_loop().time() + self.cancel_grace_s

    def _append_failure(self, record: JobRecord, failed: jobs_pb2.JobFailed) -> None:
        event = eventlog.new_event(record.job_id, len(record.events) + 1, failed=failed)
        eventlog.append(record.folder / eventlog.EVENTS, event)
        record.events.append(event)

    # ---- watch / cancel ----

    async def watch(
        self, record: JobRecord, attached: bool, latest_progress_only: bool = False
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        """The whole log, then live events, ending after the terminal event.

        `latest_progress_only`: of the events logged before the watch began, progress events are left out but the
        last. A caller attaching to a running job (an activity retried, or its run continued as new) needs the job's
        state, not every step it took to get there: a long job logs hundreds of thousands of progress events, and a
        replay of them one by one (about 4,000 a second through the TS activity here) could outlast a run that
        continues as new every few seconds, so that no run of the chain ever caught up (long-runs.test.ts, 20,000
        updates). Every other event (checkpoints, evaluations, logs, the end) is sent, in order."""
        sent = 0
        last_backlog_progress = -1
        if latest_progress_only:
            for index, event in enumerate(record.events):
                if event.WhichOneof("event") == "progress":
                    last_backlog_progress = index
        while True:
            async with record.changed:
                await record.changed.wait_for(lambda n=sent: len(record.events) > n or not record.running)
                batch = record.events[sent:]
            for index, event in enumerate(batch, start=sent):
                if index < last_backlog_progress and event.WhichOneof("event") == "progress":
                    continue  # superseded by a later progress event of the backlog
                if eventlog.is_terminal(event):
                    await record.done.wait()  # the stream ends once the process is gone and its slot free
                if attached and event.WhichOneof("event") == "accepted":
                    event = jobs_pb2.JobEvent.FromString(event.SerializeToString())
                    event.accepted.attached = True
                yield event
                if eventlog.is_terminal(event):
                    return
            sent += len(batch)
            if not batch and not record.running:
                return  # ended without a terminal event (should not happen: supervise writes one)

    async def cancel(self, job_id: str, wait: bool, reason: str = "", watcher: str = "") -> jobs_pb2.Job:
        """Stops the job, unless `watcher` is given and other runs still wait for it: then only that one leaves."""
        record = self.require(job_id)
        if record.running:
            if watcher:
                remove_watcher(record.folder, watcher)
                others = watchers(record.folder)
                if others:
                    log.info(
                        "watcher left; the job runs on for the others",
                        extra={"job_id": job_id, "watcher": watcher, "watchers": others},
                    )
                    return record.job()
            if not record.local:  # its owner's job process reads the file; its owner kills it after the grace
                if not (record.folder / eventlog.CANCEL).exists():
                    (record.folder / eventlog.CANCEL).write_text(reason or "cancelled by a caller")
                    log.info("job cancel requested through the store", extra={"job_id": job_id, "reason": reason})
            elif record.cancel_deadline is None:
                self._request_stop(record, reason or "cancelled by a caller")
                log.info("job cancel requested", extra={"job_id": job_id, "reason": reason})
            if wait:
                await record.done.wait()
        return record.job()

    async def close(self) -> None:
        """Server shutdown: running jobs checkpoint and stop (killed after the grace period)."""
        running = self.running()
        await asyncio.gather(*(self.cancel(r.job_id, wait=True, reason="worker shutting down") for r in running))
        if self._forkserver is not None:
            await self._forkserver.close()
