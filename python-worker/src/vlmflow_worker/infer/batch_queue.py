"""The model thread and its queue: concurrent Generate requests for the same model and generation settings share
generate() calls, each request getting exactly its own answers.

    queue = BatchQueue(cache, wait_s=0.02)
    with queue.preparing():                        # while the request's media is read and encoded elsewhere
        entry, loaded_now = queue.call(lambda: cache.get(spec)).result()    # loads run on the model thread too
        future = queue.submit(Submission(spec, encodings, costs, kwargs, budget, eos_ids, pad_id))
    outcome = future.result()                      # one Generated per item, in the order submitted

One thread owns the model: it loads models and runs every generate() call, so one model sits on the device at a
time and calls never overlap. It never touches the tokenizer (encoding and decoding are the caller's, on one other
thread: fast tokenizers are not thread-safe).

Batches. Requests merge when their key matches: the model, the generation settings and the budget (an explicit
batch_size is part of it). A call takes items first-in first-out across requests, each request's items in the
order given (the server gives them shortest first), until the next item would pass the budget
(generate.BatchFill). A call that is not full waits for more requests while some are still being prepared (media
read, prompts encoded) or fewer are queued than the last call answered, as long as they keep arriving less than
`wait_s` apart (at most MAX_WAITS × wait_s in all). Why: synchronous callers answered by one call come back one
network round trip and one preparation apart; starting with the first few would split them into small calls for
good. A lone caller never waits (its last call answered one request). Seeded sampling requests never merge: their
answers must not depend on what else was asked.

Errors and cancellation. A call that fails while holding items of several requests is run again request by
request, so the error reaches only the request it belongs to. A cancelled request's items not yet in a call are
dropped; a call already running finishes for the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from vlmflow_worker.infer.generate import BatchFill, Budget, Cost, Generated, generate_tokens, out_of_memory, seed_call

log = logging.getLogger("vlmflow.generate")

MAX_WAITS = 10  # a call waits at most this many wait_s for requests being prepared, however steadily they arrive


@dataclass
class Submission:
    """One request's encoded items, ready for the model."""

    spec: Hashable  # the ModelSpec the model cache knows
    encodings: list[dict[str, Any]]
    costs: list[Cost]
    kwargs: dict[str, Any]  # model.generate arguments
    budget: Budget
    eos_ids: list[int]
    pad_id: int
    seed: int = 0  # set for seeded sampling: the request then runs in calls of its own, reseeded per call


@dataclass
class Outcome:
    generated: list[Generated]  # in the order of Submission.encodings
    generate_seconds: float  # the calls that held its items, end to end (shared calls counted whole)
    calls: int


@dataclass
class _Pending:
    job: Submission
    key: Hashable
    future: Future[Outcome]
    submitted: float
    taken: int = 0  # items handed to calls so far
    done: int = 0
    results: list[Generated | None] = field(default_factory=list)
    generate_seconds: float = 0.0
    calls: int = 0


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


Slice = tuple[_Pending, int, int]  # a request and the range of its items in one call


def merge_key(job: Submission) -> Hashable:
    own = object() if job.seed else None  # a key no other request has
    return (job.spec, tuple(sorted(job.kwargs.items())), job.budget, own)


class BatchQueue:
    def __init__(self, cache: Any, *, wait_s: float = 0.02) -> None:
        self._cache = cache
        self._wait_s = wait_s
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []  # requests with items not yet in a call, oldest first
        self._calls: deque[_Call] = deque()
        self._preparing = 0
        self._last_arrival = 0.0  # when the newest request was submitted
        self._last_answered = 0  # requests the last call finished: callers that may come straight back
        self._closed = False
        self.generate_calls = 0  # for tests, benchmarks and logs
        self._thread = threading.Thread(target=self._run, name="generate-model", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Runs `fn` on the model thread (a model load), before any further generate() call."""
        future: Future[Any] = Future()
        with self._cond:
            self._refuse_if_closed()
            self._calls.append(_Call(fn, future))
            self._cond.notify_all()
        return future

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Marks a request on its way (media being read, prompts encoded): requests already queued wait a little
        for it, so that they can share a call."""
        with self._cond:
            self._preparing += 1
        try:
            yield
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()

    def submit(self, job: Submission) -> Future[Outcome]:
        """Queues a request's items; the future ends with its Outcome or its error. Cancelling the future drops the
        items not yet in a call."""
        future: Future[Outcome] = Future()
        pending = _Pending(job, merge_key(job), future, time.monotonic(), results=[None] * len(job.encodings))
        with self._cond:
            self._refuse_if_closed()
            self._pending.append(pending)
            self._last_arrival = pending.submitted
            self._cond.notify_all()
        return future

    def close(self, wait_s: float = 0) -> None:
        """Stops the model thread after the call in progress (waiting up to `wait_s` for it); requests still
        queued are cancelled."""
        with self._cond:
            self._closed = True
            for pending in self._pending:
                pending.future.cancel()
            for call in self._calls:
                call.future.cancel()
            self._pending.clear()
            self._calls.clear()
            self._cond.notify_all()
        if wait_s:
            self._thread.join(wait_s)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RuntimeError("the generate queue is closed (the server is stopping)")

    # ---- the model thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                task = self._next_task()
            if task is None:
                return
            if isinstance(task, _Call):
                if task.future.set_running_or_notify_cancel():
                    try:
                        task.future.set_result(task.fn())
                    except BaseException as err:  # handed to the caller, whatever it is
                        task.future.set_exception(err)
            else:
                self._generate(task)

    def _next_task(self) -> _Call | list[Slice] | None:
        """Under the lock: the next model load, or the next call's items once it is worth starting."""
        while not self._closed:
            if self._calls:
                return self._calls.popleft()
            self._pending = [p for p in self._pending if not p.future.done()]  # cancelled callers
            if not self._pending:
                self._cond.wait()
                continue
            head = self._pending[0]
            slices, full = self._fill(head.key, head.job)
            now = time.monotonic()
            wait = min(self._last_arrival + self._wait_s, head.submitted + MAX_WAITS * self._wait_s) - now
            expecting = self._preparing > 0 or len(self._pending) < self._last_answered
            if full or not expecting or wait <= 0:
                for pending, _, stop in slices:
                    pending.taken = stop
                self._pending = [p for p in self._pending if p.taken < len(p.job.encodings)]
                return slices
            self._cond.wait(wait)  # woken early by a submission or a request that stops preparing
        return None

    def _fill(self, key: Hashable, head: Submission) -> tuple[list[Slice], bool]:
        """The items of one call: FIFO over the requests sharing `key`. Returns them and whether the call is full."""
        fill = BatchFill(head.budget, head.kwargs["max_new_tokens"])
        slices: list[Slice] = []
        for pending in self._pending:
            if pending.key != key or pending.future.done():
                continue
            start = stop = pending.taken
            costs = pending.job.costs
            while stop < len(costs) and fill.fits(costs[stop]):
                fill.add(costs[stop])
                stop += 1
            if stop > start:
                slices.append((pending, start, stop))
            if stop < len(costs):
                return slices, True
        return slices, False

    def _generate(self, slices: list[Slice]) -> None:
        requests = list({id(p): p for p, _, _ in slices}.values())
        started = time.perf_counter()
        try:
            rows = self._generate_call(slices)
        except Exception as err:
            if len(requests) > 1:
                log.warning("shared generate call failed; running its requests one by one", extra={"error": str(err)})
                for pending in requests:
                    self._generate([s for s in slices if s[0] is pending])
            else:
                self._fail(requests[0], sum(stop - start for _, start, stop in slices), err)
            return
        seconds = time.perf_counter() - started
        outputs = iter(rows)
        for pending, start, stop in slices:
            for i in range(start, stop):
                pending.results[i] = next(outputs)
            pending.done += stop - start
        self._last_answered = 0
        for pending in requests:
            pending.generate_seconds += seconds
            pending.calls += 1
            if pending.done == len(pending.job.encodings):
                self._last_answered += 1
                generated = [g for g in pending.results if g is not None]
                _settle(pending.future, Outcome(generated, pending.generate_seconds, pending.calls))

    def _generate_call(self, slices: list[Slice]) -> list[Generated]:
        first = slices[0][0]
        job = first.job
        entry, _ = self._cache.get(job.spec)  # cached: the request loaded it; evicted since: loaded again here
        if job.seed:
            seed_call(job.seed, first.calls)
        encodings = [p.job.encodings[i] for p, start, stop in slices for i in range(start, stop)]
        self.generate_calls += 1
        log.debug("generate call", extra={"rows": len(encodings), "requests": len({id(p) for p, _, _ in slices})})
        return generate_tokens(entry.model, encodings, job.kwargs, job.eos_ids, job.pad_id)

    def _fail(self, pending: _Pending, rows: int, err: Exception) -> None:
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            err = out_of_memory(rows, err)
        _settle(pending.future, err)


def _settle(future: Future[Outcome], result: Outcome | BaseException) -> None:
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # the caller cancelled while its last call ran: nobody is waiting for the answer
