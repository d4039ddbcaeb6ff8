"""The Generate RPC: batched inference in the server process, with loaded models cached.

Model work runs on one dedicated thread (one model on the device at a time, requests served in turn), so the
event loop keeps answering Health, job RPCs and other calls while a batch generates. A bad request ends with
INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION naming the item; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc

from vlmflow.v1 import worker_pb2
from vlmflow_worker import heavy_imports
from vlmflow_worker.errors import WorkerError, abort_with
from vlmflow_worker.serve.settings import WorkerSettings

log = logging.getLogger("vlmflow.generate")


class GenerateRpcs:
    settings: WorkerSettings

    def setup_generate(self) -> None:
        """Called once when the server is built: the model thread and the model cache (filled on first use)."""
        self._generate_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._model_cache = None

    async def close_generate(self) -> None:
        """Called once when the server stops."""
        self._generate_executor.shutdown(wait=False, cancel_futures=True)
        self._model_cache = None

    def _run_generate(self, request: worker_pb2.GenerateRequest) -> worker_pb2.GenerateResponse:
        # Imported here: torch and transformers take seconds to import, and Health must answer before that. Through
        # the server's one import lock: a job request or the job warm-up may be importing transformers right now.
        faults = heavy_imports.import_module("vlmflow_worker.faults")
        run_generate = heavy_imports.import_module("vlmflow_worker.infer.generate").run_generate
        ModelCache = heavy_imports.import_module("vlmflow_worker.models").ModelCache  # noqa: N806

        if self._model_cache is None:
            self._model_cache = ModelCache(settings=self.settings)
        faults.slow_generate()  # test hook (issue 7), inert unless its variable is set
        return run_generate(request, self.settings, self._model_cache)

    async def Generate(  # noqa: N802
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GenerateResponse:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._generate_executor, self._run_generate, request)
        except WorkerError as err:
            log.warning("generate refused", extra={"status": err.status.name, "error": err.message})
            await abort_with(context, err)
        except Exception as err:  # a bug or a library failure: INTERNAL with what happened, and keep serving
            log.exception("generate failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"Generate failed: {type(err).__name__}: {err}")
        raise AssertionError("unreachable")
