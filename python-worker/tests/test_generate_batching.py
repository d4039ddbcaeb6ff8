"""Generate's batching on the tiny model: calls cut by the budget, concurrent requests merged into shared generate()
calls (infer/batch_queue.py) with each request getting exactly its answers, greedy answers the same batched or
alone, errors and cancellation confined to their request; then the same through a real worker process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from pathlib import Path

import grpc
import pytest

from tests import test_generate
from tests.conftest import WorkerProcess, start_worker
from tests.test_generate import DATA, DEMO, photo
from vlmflow.v1 import common_pb2, generate_pb2, worker_pb2
from vlmflow_worker.infer.batch_queue import BatchQueue, Outcome, Submission
from vlmflow_worker.infer.generate import (
    Budget,
    Cost,
    check_request,
    encode,
    eos_token_ids,
    pad_token_id,
    plan_batches,
    prepare_item,
    run_generate,
)
from vlmflow_worker.models import ModelCache, ModelSpec
from vlmflow_worker.serve.settings import WorkerSettings

Item = generate_pb2.GenerateItem
# test_generate.py's worker settings (the demo data as a root) and model cache, shared rather than copied.
settings = test_generate.settings
cache = test_generate.cache
WIDE = Budget(tokens=1 << 30, pixels=1 << 40)  # never splits


def items(prefix: str) -> list[Item]:
    """Four items of different prompt lengths (so batching pads them) and kinds."""
    return [
        Item(id=f"{prefix}-caption", task=generate_pb2.TASK_CAPTION, images=[photo("1.jpg")]),
        Item(
            id=f"{prefix}-vqa",
            task=generate_pb2.TASK_VQA,
            prompt=f"{prefix}: what is here, in detail?",
            images=[photo("2.jpg")],
        ),
        Item(id=f"{prefix}-text", prompt=f"Say hello to {prefix}."),
        Item(
            id=f"{prefix}-video",
            task=generate_pb2.TASK_VIDEO,
            video=common_pb2.Video(uri=str(DATA / "3.mp4"), num_frames=2),
        ),
    ]


# ---- the budget -----------------------------------------------------------------------------------------------


def test_calls_are_cut_by_the_token_and_pixel_budget_shortest_first() -> None:
    costs = [Cost(30, 0), Cost(10, 4096), Cost(20, 4096), Cost(10, 0), Cost(40, 8192)]
    # rows x (longest + 10 new tokens) <= 100: two rows of up to 40 tokens, or three of up to 23.
    assert plan_batches(costs, Budget(tokens=100, pixels=1 << 20), 10) == [[1, 3, 2], [0, 4]]
    # 8192 pixels: the two 4096-pixel items fill a call, the 8192-pixel one needs its own.
    assert plan_batches(costs, Budget(tokens=1000, pixels=8192), 10) == [[1, 3, 2, 0], [4]]
    # An item over the budget on its own still runs, alone.
    assert plan_batches([Cost(500, 0), Cost(5, 0)], Budget(tokens=100, pixels=1), 10) == [[1], [0]]
    # An explicit batch size is used as given, whatever the budget.
    assert plan_batches(costs, Budget(tokens=1, pixels=1, rows=2), 10) == [[1, 3], [2, 0], [4]]


def test_a_call_closes_at_the_first_item_that_does_not_fit() -> None:
    costs = [Cost(10, 4096), Cost(10, 4096), Cost(10, 4096), Cost(10, 0)]
    # Two images fill 8192 pixels; the third opens a new call, and the text-only item after it joins that one
    # (items are never reordered past each other: a call takes them in order).
    assert plan_batches(costs, Budget(tokens=1000, pixels=8192), 10) == [[0, 1], [2, 3]]


# ---- the queue, in process ------------------------------------------------------------------------------------


@pytest.fixture
def queue(cache: ModelCache) -> Iterator[BatchQueue]:
    # A long wait: a test holds `preparing()` open while it submits, so the requests meet in the queue for certain.
    q = BatchQueue(cache, wait_s=30)
    yield q
    q.close(wait_s=60)


def submission(
    tiny_model_path: Path,
    settings: WorkerSettings,
    cache: ModelCache,
    request_items: list[Item],
    *,
    budget: Budget = WIDE,
    max_new_tokens: int = 8,
    **generation,
) -> Submission:
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        items=request_items,
        generation=common_pb2.GenerationConfig(max_new_tokens=max_new_tokens, **generation),
    )
    entry, _ = cache.get(ModelSpec(str(tiny_model_path)))
    encodings = [encode(entry.processor, prepare_item(item, i, settings)) for i, item in enumerate(request_items)]
    return Submission(
        spec=ModelSpec(str(tiny_model_path)),
        encodings=encodings,
        costs=[Cost.of(e) for e in encodings],
        kwargs=check_request(request),
        budget=budget,
        eos_ids=eos_token_ids(entry.model, entry.processor),
        pad_id=pad_token_id(entry.processor),
        seed=request.generation.seed if request.generation.do_sample else 0,
    )


def submit_together(queue: BatchQueue, *jobs: Submission) -> list[Future[Outcome]]:
    with queue.preparing():
        return [queue.submit(job) for job in jobs]


def tokens(outcome: Outcome) -> list[list[int]]:
    return [g.tokens for g in outcome.generated]


@pytest.fixture(scope="module")
def alone(tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache) -> dict[str, list[int]]:
    """Each item's greedy answer generated on its own (one item per call)."""
    q = BatchQueue(cache, wait_s=0)
    answers = {}
    for item in items("a") + items("b"):
        answers[item.id] = q.submit(submission(tiny_model_path, settings, cache, [item])).result(60).generated[0].tokens
    q.close(wait_s=60)
    return answers


def test_two_concurrent_requests_share_calls_and_each_gets_its_answers(
    queue: BatchQueue, tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache, alone: dict
) -> None:
    a, b = items("a"), items("b")
    first, second = submit_together(
        queue,
        submission(tiny_model_path, settings, cache, a),
        submission(tiny_model_path, settings, cache, b),
    )
    got_a, got_b = first.result(60), second.result(60)
    assert queue.generate_calls == 1 < len(a) + len(b)
    assert got_a.calls == got_b.calls == 1
    # Routed right, in the order submitted, and identical to each item generated alone (left padding).
    assert tokens(got_a) == [alone[item.id] for item in a]
    assert tokens(got_b) == [alone[item.id] for item in b]


def test_merged_requests_are_cut_by_the_budget_and_stay_identical(
    queue: BatchQueue, tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache, alone: dict
) -> None:
    a, b = items("a"), items("b")
    budget = Budget(tokens=1, pixels=1, rows=3)  # three rows per call (batch_size 3)
    first, second = submit_together(
        queue,
        submission(tiny_model_path, settings, cache, a, budget=budget),
        submission(tiny_model_path, settings, cache, b, budget=budget),
    )
    got_a, got_b = first.result(60), second.result(60)
    assert queue.generate_calls == 3  # 8 items, 3 per call; b's first item shares a's last call
    assert (got_a.calls, got_b.calls) == (2, 2)
    assert tokens(got_a) == [alone[item.id] for item in a]
    assert tokens(got_b) == [alone[item.id] for item in b]


def test_a_failing_shared_call_fails_only_the_request_it_belongs_to(
    queue: BatchQueue, tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache, alone: dict
) -> None:
    good = submission(tiny_model_path, settings, cache, items("a"))
    bad = submission(tiny_model_path, settings, cache, [Item(id="bad", prompt="hello")])
    bad.encodings[0]["input_ids"][0, 0] = 10**6  # past the vocabulary: the embedding lookup raises
    first, second = submit_together(queue, good, bad)
    assert tokens(first.result(60)) == [alone[item.id] for item in items("a")]
    with pytest.raises(IndexError):
        second.result(60)
    assert queue.generate_calls == 3  # the shared call, then each request alone


def test_a_cancelled_request_is_dropped_and_the_others_are_answered(
    queue: BatchQueue, tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache, alone: dict
) -> None:
    a, b = items("a"), items("b")
    with queue.preparing():
        first = queue.submit(submission(tiny_model_path, settings, cache, a))
        second = queue.submit(submission(tiny_model_path, settings, cache, b))
        assert second.cancel()  # the caller went away before any call
    assert tokens(first.result(60)) == [alone[item.id] for item in a]
    assert queue.generate_calls == 1 and first.result().calls == 1
    with pytest.raises(CancelledError):
        second.result()

    # Cancelled while its call runs: the call finishes for the request sharing it.
    third, fourth = submit_together(
        queue,
        submission(tiny_model_path, settings, cache, a, max_new_tokens=64),
        submission(tiny_model_path, settings, cache, b, max_new_tokens=64),
    )
    deadline = time.monotonic() + 30
    while queue.generate_calls < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    third.cancel()
    assert len(fourth.result(60).generated) == len(b)


def test_seeded_sampling_requests_never_share_a_call(
    queue: BatchQueue, tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache
) -> None:
    sampled = {"do_sample": True, "temperature": 1.5, "seed": 7}
    job = submission(tiny_model_path, settings, cache, items("a"), **sampled)
    first, second = submit_together(queue, job, submission(tiny_model_path, settings, cache, items("a"), **sampled))
    assert tokens(first.result(60)) == tokens(second.result(60))  # same seed, same items: same answers
    assert queue.generate_calls == 2


def test_one_request_keeps_its_order_across_budget_calls(
    tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache, alone: dict
) -> None:
    both = items("a") + items("b")
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        items=both,
        generation=common_pb2.GenerationConfig(max_new_tokens=8),
    )
    small = WorkerSettings(artifact_root=settings.artifact_root, data_roots=[DEMO], generate_batch_tokens=400)
    costs = submission(tiny_model_path, settings, cache, both).costs
    assert len(plan_batches(costs, Budget.for_request(small, 0), 8)) >= 3
    response = run_generate(request, small, cache)
    assert [r.id for r in response.results] == [item.id for item in both]
    entry, _ = cache.get(ModelSpec(str(tiny_model_path)))
    for result, item in zip(response.results, both, strict=True):
        assert result.answer_tokens == len(alone[item.id])
        assert result.text == entry.processor.tokenizer.decode(alone[item.id], skip_special_tokens=True).strip()


# ---- through a real worker ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("artifacts"), "--data-root", str(DEMO))
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=30)


def _request(model: Path, request_items: list[Item], max_new_tokens: int = 8) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(model)),
        items=request_items,
        generation=common_pb2.GenerationConfig(max_new_tokens=max_new_tokens),
    )


def test_concurrent_callers_get_their_own_answers_and_errors(served: WorkerProcess, tiny_model_path: Path) -> None:
    stub = served.stub()
    requests = {name: items(name) for name in ("a", "b", "c", "d")}
    sequential = {name: stub.Generate(_request(tiny_model_path, its), timeout=120) for name, its in requests.items()}
    corrupt = Item(id="broken", task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(data=b"\x89PNG garbage")])
    slow = _request(tiny_model_path, items("slow"), max_new_tokens=256)

    start = threading.Barrier(len(requests) + 2)  # the callers, the bad request and this thread
    replies: dict[str, object] = {}

    def call(name: str, request: worker_pb2.GenerateRequest) -> None:
        start.wait()
        try:
            replies[name] = stub.Generate(request, timeout=120)
        except grpc.RpcError as err:
            replies[name] = err

    threads = [threading.Thread(target=call, args=(n, _request(tiny_model_path, its))) for n, its in requests.items()]
    threads.append(threading.Thread(target=call, args=("bad", _request(tiny_model_path, [*items("e"), corrupt]))))
    for thread in threads:
        thread.start()
    start.wait()
    cancelled = stub.Generate.future(slow, timeout=120)
    time.sleep(0.05)
    cancelled.cancel()  # the caller goes away mid-way
    for thread in threads:
        thread.join(180)

    for name, its in requests.items():
        reply = replies[name]
        assert isinstance(reply, worker_pb2.GenerateResponse), reply
        assert [r.id for r in reply.results] == [item.id for item in its]
        assert [(r.text, r.answer_tokens) for r in reply.results] == [
            (r.text, r.answer_tokens) for r in sequential[name].results
        ]
    bad = replies["bad"]
    assert isinstance(bad, grpc.RpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[4] (broken).images[0]" in bad.details()
    # The worker serves on after the cancelled call.
    again = stub.Generate(_request(tiny_model_path, requests["a"]), timeout=60)
    assert [r.text for r in again.results] == [r.text for r in sequential["a"].results]
