"""The Generate RPC: inference in the server process, loaded models cached, concurrent requests batched together.

Each request goes through two threads, so the event loop keeps answering Health, job RPCs and other calls:
- the processor thread reads its media, encodes its prompts and decodes its answers: all tokenizer work, on one
  thread because fast tokenizers are not thread-safe;
- the model thread (infer/batch_queue.py) loads models and runs generate() calls, merging the items of concurrent
  requests for the same model and settings into shared calls cut by the worker's budget.
A bad request ends with INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION naming the item, before it reaches the
model thread, so requests it would have shared a call with never see it; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from vlmflow.v1 import generate_pb2, worker_pb2
from vlmflow_worker import heavy_imports
from vlmflow_worker.errors import WorkerError, abort_with
from vlmflow_worker.serve.metrics import WorkerMetrics
from vlmflow_worker.serve.settings import WorkerSettings

log = logging.getLogger("vlmflow.generate")

# Imported through the server's one import lock (heavy_imports.py) before the two threads use them: transformers'
# lazy modules must not be first imported by the processor thread and the model thread at once.
_HEAVY_MODULES = (
    "vlmflow_worker.faults",
    "vlmflow_worker.models",
    "vlmflow_worker.infer.generate",
    "vlmflow_worker.infer.batch_queue",
    "transformers.generation.utils",
    "transformers.models.idefics3.modeling_idefics3",
    "transformers.models.idefics3.processing_idefics3",
    # Every supported family's model and processor modules (families/): about 0.1 s in all once the above are in.
    "transformers.models.smolvlm.modeling_smolvlm",
    "transformers.models.smolvlm.processing_smolvlm",
    "transformers.models.smolvlm.video_processing_smolvlm",
    "transformers.models.qwen2_vl.image_processing_qwen2_vl",
    "transformers.models.qwen2_vl.video_processing_qwen2_vl",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
    "transformers.models.qwen2_5_vl.processing_qwen2_5_vl",
    "transformers.models.qwen3_vl.modeling_qwen3_vl",
    "transformers.models.qwen3_vl.processing_qwen3_vl",
    "transformers.models.qwen3_vl.video_processing_qwen3_vl",
)


@dataclass
class _Processor:
    """A loaded model's processor and the token ids generation needs; used on the processor thread only."""

    processor: Any
    eos_ids: list[int]
    pad_id: int


@dataclass
class _Prepared:
    kwargs: dict[str, Any]
    spec: Any  # ModelSpec
    items: list[Any]  # PreparedItem
    seconds: float


class GenerateRpcs:
    settings: WorkerSettings
    metrics: WorkerMetrics

    def setup_generate(self) -> None:
        """Called once when the server is built: the processor thread; the model thread and the model cache are made
        on first use (their modules take seconds to import, and Health must answer before that)."""
        self._processor_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate-processor")
        self._queue: Any = None  # BatchQueue
        self._model_cache: Any = None  # ModelCache
        self._processors: dict[Any, _Processor] = {}  # by ModelSpec, while the model cache holds the model
        # Modules imported on first use, through the import lock (see _HEAVY_MODULES).
        self._faults: Any = None
        self._generate_module: Any = None
        self._batch_queue_module: Any = None
        self._as_spec: Any = None

    async def close_generate(self) -> None:
        """Called once when the server stops."""
        self._processor_executor.shutdown(wait=False, cancel_futures=True)
        if self._queue is not None:
            self._queue.close()
        self._model_cache = None

    async def Generate(  # noqa: N802
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GenerateResponse:
        started = time.perf_counter()
        # Each outcome is counted before its status goes out: `context.abort` sends the status and only then raises,
        # so a caller that scrapes /metrics as soon as it has its answer must already see the count.
        requests = self.metrics.generate_requests
        try:
            response = await self._generate(request)
        except WorkerError as err:
            requests.labels(err.status.name).inc()
            log.warning("generate refused", extra={"status": err.status.name, "error": err.message})
            await abort_with(context, err)
            raise AssertionError("unreachable") from err
        except asyncio.CancelledError:  # the caller went away: no status goes out
            requests.labels(grpc.StatusCode.CANCELLED.name).inc()
            raise
        except Exception as err:  # a bug or a library failure: INTERNAL with what happened, and keep serving
            requests.labels(grpc.StatusCode.INTERNAL.name).inc()
            log.exception("generate failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"Generate failed: {type(err).__name__}: {err}")
            raise AssertionError("unreachable") from err
        self.metrics.generate_answered(response, time.perf_counter() - started)
        requests.labels(grpc.StatusCode.OK.name).inc()
        return response

    async def _generate(self, request: worker_pb2.GenerateRequest) -> worker_pb2.GenerateResponse:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()

        def on_processor_thread(fn, *args):
            return loop.run_in_executor(self._processor_executor, fn, *args)

        if self._queue is None:
            await on_processor_thread(self._start)
        queue, generate = self._queue, self._generate_module
        with queue.preparing():
            # 1. Checks and media (processor thread): a bad item fails this request only, naming the item.
            prepared: _Prepared = await on_processor_thread(self._prepare, request)
            # 2. The model, loaded on the model thread the first time (or again after the cache evicted it).
            load_seconds = 0.0
            encoded = await on_processor_thread(self._encode, prepared)
            if encoded is None:
                entry, loaded_now = await asyncio.wrap_future(queue.call(lambda: self._model_cache.get(prepared.spec)))
                load_seconds = entry.load_seconds if loaded_now else 0.0
                encoded = await on_processor_thread(self._encode, prepared, entry)
            known, encodings, encode_seconds = encoded
            if self._faults.GENERATE_SECONDS in os.environ:  # test hook (issue 7): a slower device, per request
                await asyncio.wrap_future(queue.call(self._faults.slow_generate))
            # 3. Queued shortest first, so that a request's own items share calls with similar lengths.
            costs = [generate.Cost.of(e) for e in encodings]
            order = sorted(range(len(encodings)), key=lambda i: costs[i].tokens)
            do_sample = request.generation.do_sample
            job = self._batch_queue_module.Submission(
                spec=prepared.spec,
                encodings=[encodings[i] for i in order],
                costs=[costs[i] for i in order],
                kwargs=prepared.kwargs,
                budget=generate.Budget.for_request(self.settings, request.batch_size),
                eos_ids=known.eos_ids,
                pad_id=known.pad_id,
                seed=request.generation.seed if do_sample else 0,
            )
            future = queue.submit(job)
        # Cancelling this await (the caller went away) cancels the future: its items not yet in a call are dropped.
        outcome = await asyncio.wrap_future(future)
        generated: list[Any] = [None] * len(order)
        for position, i in enumerate(order):
            generated[i] = outcome.generated[position]
        texts = await on_processor_thread(lambda: [generate.decode(known.processor, g) for g in generated])
        timings = generate_pb2.GenerateTimings(
            load_seconds=load_seconds,
            preprocess_seconds=prepared.seconds + encode_seconds,
            generate_seconds=outcome.generate_seconds,
            total_seconds=time.perf_counter() - started,
        )
        return generate.build_response(prepared.items, texts, generated, timings)

    # ---- on the processor thread -------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._queue is not None:
            return
        for name in _HEAVY_MODULES:
            heavy_imports.import_module(name)
        self._faults = heavy_imports.import_module("vlmflow_worker.faults")
        self._generate_module = heavy_imports.import_module("vlmflow_worker.infer.generate")
        self._batch_queue_module = heavy_imports.import_module("vlmflow_worker.infer.batch_queue")
        models = heavy_imports.import_module("vlmflow_worker.models")
        self._as_spec = models.as_spec
        self._model_cache = models.ModelCache(settings=self.settings)
        self._queue = self._batch_queue_module.BatchQueue(
            self._model_cache, wait_s=self.settings.generate_batch_wait_ms / 1000
        )

    def _prepare(self, request: worker_pb2.GenerateRequest) -> _Prepared:
        started = time.perf_counter()
        generate = self._generate_module
        kwargs = generate.check_request(request)
        spec = self._as_spec(request.model, self.settings)
        items = [generate.prepare_item(item, i, self.settings) for i, item in enumerate(request.items)]
        return _Prepared(kwargs, spec, items, time.perf_counter() - started)

    def _encode(self, prepared: _Prepared, entry: Any = None) -> tuple[_Processor, list[dict], float] | None:
        """Encodes with the model's processor; None when the model is not loaded (then `entry`, once loaded)."""
        generate = self._generate_module
        if entry is not None:
            known = _Processor(
                entry.processor,
                generate.eos_token_ids(entry.model, entry.processor),
                generate.pad_token_id(entry.processor),
            )
            self._processors[prepared.spec] = known
            for spec in [s for s in self._processors if s not in self._model_cache]:
                del self._processors[spec]  # evicted: its next request loads it (and its processor) again
        elif prepared.spec in self._model_cache and prepared.spec in self._processors:
            known = self._processors[prepared.spec]
        else:
            return None
        started = time.perf_counter()
        encodings = [generate.encode(known.processor, item) for item in prepared.items]
        return known, encodings, time.perf_counter() - started
