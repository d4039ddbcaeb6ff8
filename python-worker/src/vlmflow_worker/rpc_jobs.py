"""The job RPCs: PrepareDataset, Train, Evaluate, Export, WatchJob, CancelJob, GetJob, ListJobs.

Long jobs run in child processes; a job id makes starting idempotent (issues 4 and 5 fill this in).
"""

from __future__ import annotations

import grpc

from vlmflow_worker.settings import WorkerSettings


async def _unimplemented(context: grpc.aio.ServicerContext, what: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented by this worker yet")


class JobRpcs:
    settings: WorkerSettings

    def setup_jobs(self) -> None:
        """Called once when the server is built (job registry)."""

    async def close_jobs(self) -> None:
        """Called once when the server stops: running jobs are asked to checkpoint and stop."""

    def jobs_running(self) -> int:
        return 0

    async def PrepareDataset(self, request, context):  # noqa: N802
        await _unimplemented(context, "PrepareDataset")

    async def Train(self, request, context):  # noqa: N802
        await _unimplemented(context, "Train")

    async def Evaluate(self, request, context):  # noqa: N802
        await _unimplemented(context, "Evaluate")

    async def Export(self, request, context):  # noqa: N802
        await _unimplemented(context, "Export")

    async def WatchJob(self, request, context):  # noqa: N802
        await _unimplemented(context, "WatchJob")

    async def CancelJob(self, request, context):  # noqa: N802
        await _unimplemented(context, "CancelJob")

    async def GetJob(self, request, context):  # noqa: N802
        await _unimplemented(context, "GetJob")

    async def ListJobs(self, request, context):  # noqa: N802
        await _unimplemented(context, "ListJobs")
