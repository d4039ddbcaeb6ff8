"""Generate through a real worker process: answers, typed gRPC errors naming the item, and the server keeps
serving after a bad request and while a batch generates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import WorkerProcess, start_worker
from vlmflow.v1 import common_pb2, generate_pb2, worker_pb2

DEMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo"
DATA = DEMO / "mllm_demo_data"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[WorkerProcess]:
    if not DATA.is_dir():
        pytest.fail(f"the shared demo data is missing (a broken checkout: ../shared sits beside the clone) at {DEMO}")
    proc = start_worker(tmp_path_factory.mktemp("artifacts"), "--data-root", str(DEMO))
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=30)


def _request(model: Path, *items: generate_pb2.GenerateItem) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(model)),
        items=items,
        generation=common_pb2.GenerationConfig(max_new_tokens=4),
    )


GOOD = generate_pb2.GenerateItem(
    id="good", task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(uri=str(DATA / "1.jpg"))]
)


def test_bad_request_then_good_request(served: WorkerProcess, tiny_model_path: Path) -> None:
    stub = served.stub()
    first = stub.Generate(_request(tiny_model_path, GOOD), timeout=120)
    assert [r.id for r in first.results] == ["good"] and first.timings.load_seconds > 0

    corrupt = generate_pb2.GenerateItem(
        id="broken", task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(data=b"\x89PNG garbage")]
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(_request(tiny_model_path, GOOD, corrupt), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[1] (broken).images[0]" in raised.value.details()

    missing = generate_pb2.GenerateItem(
        id="clip", task=generate_pb2.TASK_VIDEO, video=common_pb2.Video(uri=str(DATA / "missing.mp4"))
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(_request(tiny_model_path, missing), timeout=60)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "items[0] (clip).video" in raised.value.details()

    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(_request(tiny_model_path.parent / "no-such-model", GOOD), timeout=60)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    again = stub.Generate(_request(tiny_model_path, GOOD), timeout=60)
    assert again.results[0].id == "good" and again.timings.load_seconds == 0  # served from the model cache


def test_health_answers_while_a_batch_generates(served: WorkerProcess, tiny_model_path: Path) -> None:
    stub = served.stub()
    # Long by construction (32 answers of up to 512 tokens: seconds even on a fast machine), so the Health call
    # below lands while the batch runs however fast the tiny model generates.
    big = _request(tiny_model_path, *[GOOD] * 32)
    big.generation.max_new_tokens = 512
    future = stub.Generate.future(big, timeout=600)
    time.sleep(0.3)  # let the batch start
    asked = time.monotonic()
    stub.Health(worker_pb2.HealthRequest(), timeout=5)
    health_seconds = time.monotonic() - asked
    assert not future.done(), "Health should not wait for the batch: model work belongs off the event loop"
    reply = future.result()
    assert len(reply.results) == 32
    assert health_seconds < reply.timings.generate_seconds / 2
