"""The job RPCs: PrepareDataset, Train, Evaluate, Export, WatchJob, CancelJob, GetJob, ListJobs.

Every long RPC goes the same way: validate the request (INVALID_ARGUMENT naming the field, before anything
starts), then start the job in a child process or attach to the one running under the same job id, then stream
its events until `completed` or `failed`. The job kinds live in `jobs/kinds.py`; see `jobs/registry.py` for
capacity (refused with FAILED_PRECONDITION when full) and for why a dropped stream does not stop a job.
"""

from __future__ import annotations

import grpc

from vlmflow.v1 import jobs_pb2, worker_pb2
from vlmflow_worker.errors import InvalidArgument, WorkerError, abort_with
from vlmflow_worker.jobs import eventlog
from vlmflow_worker.jobs.kinds import spec_for
from vlmflow_worker.jobs.registry import JobRegistry
from vlmflow_worker.serve.metrics import WorkerMetrics
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.tracking.settings import settings_of as tracking_settings_of

TRAIN_KINDS = {
    jobs_pb2.TRAIN_KIND_SFT: jobs_pb2.JOB_KIND_TRAIN_SFT,
    jobs_pb2.TRAIN_KIND_DPO: jobs_pb2.JOB_KIND_TRAIN_DPO,
    jobs_pb2.TRAIN_KIND_GRPO: jobs_pb2.JOB_KIND_TRAIN_GRPO,
}


class JobRpcs:
    settings: WorkerSettings
    capacity: int
    metrics: WorkerMetrics

    def setup_jobs(self) -> None:
        """Called once when the server is built (job registry)."""
        self.registry = JobRegistry(self.settings, self.capacity, metrics=self.metrics)

    async def close_jobs(self) -> None:
        """Called once when the server stops: running jobs are asked to checkpoint and stop."""
        await self.registry.close()

    def jobs_running(self) -> int:
        return len(self.registry.running())

    async def _stream(self, kind: int, request, response_type, context: grpc.aio.ServicerContext):
        try:
            eventlog.job_dir(self.settings.artifact_root, request.job_id)
            spec_for(kind).validate(request, self.settings)
            tracking_settings_of(request).require_packages()  # MLflow / wandb asked for and not installed
            record, attached = await self.registry.start_or_attach(request.job_id, kind, request)
        except WorkerError as err:
            await abort_with(context, err)
            return
        # An attaching caller (a retried activity, a run continued as new) gets the job's state, not every step of it.
        async for event in self.registry.watch(record, attached, latest_progress_only=attached):
            yield response_type(event=event)

    async def PrepareDataset(self, request, context):  # noqa: N802
        async for response in self._stream(
            jobs_pb2.JOB_KIND_PREPARE_DATASET, request, jobs_pb2.PrepareDatasetResponse, context
        ):
            yield response

    async def Train(self, request, context):  # noqa: N802
        kind = TRAIN_KINDS.get(request.kind)
        if kind is None:
            await abort_with(
                context, InvalidArgument("kind is unspecified: set TRAIN_KIND_SFT, TRAIN_KIND_DPO or TRAIN_KIND_GRPO")
            )
            return
        async for response in self._stream(kind, request, jobs_pb2.TrainResponse, context):
            yield response

    async def Evaluate(self, request, context):  # noqa: N802
        async for response in self._stream(jobs_pb2.JOB_KIND_EVALUATE, request, jobs_pb2.EvaluateResponse, context):
            yield response

    async def Export(self, request, context):  # noqa: N802
        async for response in self._stream(jobs_pb2.JOB_KIND_EXPORT, request, jobs_pb2.ExportResponse, context):
            yield response

    async def WatchJob(self, request, context):  # noqa: N802
        try:
            record = self.registry.require(request.job_id)
        except WorkerError as err:
            await abort_with(context, err)
            return
        async for event in self.registry.watch(record, attached=True):
            yield worker_pb2.WatchJobResponse(event=event)

    async def CancelJob(self, request, context):  # noqa: N802
        try:
            job = await self.registry.cancel(request.job_id, request.wait, request.reason, request.watcher)
        except WorkerError as err:
            await abort_with(context, err)
        return worker_pb2.CancelJobResponse(job=job)

    async def GetJob(self, request, context):  # noqa: N802
        try:
            record = self.registry.require(request.job_id)
        except WorkerError as err:
            await abort_with(context, err)
        return worker_pb2.GetJobResponse(job=record.job())

    async def ListJobs(self, request, context):  # noqa: N802
        return worker_pb2.ListJobsResponse(jobs=self.registry.list(request.state, request.kind))
