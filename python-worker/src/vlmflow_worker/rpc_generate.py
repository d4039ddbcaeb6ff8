"""The Generate RPC: batched inference in the server process (issue 3 fills this in)."""

from __future__ import annotations

import grpc

from vlmflow.v1 import worker_pb2
from vlmflow_worker.settings import WorkerSettings


class GenerateRpcs:
    settings: WorkerSettings

    def setup_generate(self) -> None:
        """Called once when the server is built (model cache, executors)."""

    async def close_generate(self) -> None:
        """Called once when the server stops."""

    async def Generate(  # noqa: N802
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GenerateResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Generate is not implemented by this worker yet")
        raise AssertionError("unreachable")
