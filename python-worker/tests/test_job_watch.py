"""Jobs that outlive their callers, through the real worker and the tiny model: a hung job is declared stuck and a
retry resumes it from its checkpoint; a job two runs wait for stops only when the last one lets go; a busy worker
says so in a trailer, so a caller waits instead of failing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from vlmflow.v1 import common_pb2, jobs_pb2, worker_pb2
from vlmflow_worker.errors import ERROR_TYPE_TRAILER
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.jobs.registry import STARTUP_SILENCE_S, silence_limit_s

from .conftest import WorkerProcess, start_worker

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")


def _dataset(stub, data: Path, model: Path) -> str:
    request = jobs_pb2.PrepareDatasetRequest(
        job_id="prep",
        sources=[jobs_pb2.DatasetSource(uri=str(data / "data.jsonl"))],
        model=common_pb2.ModelRef(model_id=str(model)),
        max_length=256,
    )
    done = [r.event for r in stub.PrepareDataset(request, timeout=300)]
    assert done[-1].WhichOneof("event") == "completed", done[-1]
    return done[-1].completed.artifacts["dataset"]


def _train(job_id: str, dataset: str, model: Path, steps: int, watcher: str = "") -> jobs_pb2.TrainRequest:
    return jobs_pb2.TrainRequest(
        job_id=job_id,
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=common_pb2.ModelRef(model_id=str(model)),
        dataset_uri=dataset,
        output_uri=f"runs/{job_id}",
        lora=jobs_pb2.LoraConfig(r=4, alpha=8, dropout=0.0),
        training=jobs_pb2.TrainingConfig(
            max_steps=steps, micro_batch_size=2, logging_steps=1, save_steps=2, learning_rate=1e-3, seed=1
        ),
        watcher=watcher,
    )


@pytest.fixture
def worker_with(tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch):
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        data = tmp_path / "data"
        if not data.exists():
            generate("shape_colour", 16, 0, data)
        worker = start_worker(tmp_path / "artifacts", "--data-root", str(data), "--data-root", str(tiny_model_path))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.process.terminate()
        worker.process.wait(timeout=60)


def test_a_job_process_that_has_not_started_yet_gets_the_startup_allowance() -> None:
    # Before its first event a job is importing torch and transformers (slow on a loaded host), not hung: a short
    # limit applies only once it has spoken; a limit longer than the allowance applies throughout.
    assert silence_limit_s(20, started=True) == 20
    assert silence_limit_s(20, started=False) == STARTUP_SILENCE_S
    assert silence_limit_s(1800, started=False) == 1800


def test_a_silent_job_is_declared_stuck_and_the_retry_resumes_from_its_checkpoint(
    worker_with, tmp_path: Path, tiny_model_path: Path
) -> None:
    # Steps are well under a second here; a hang at step 5 leaves the job silent past the 20 s limit.
    worker = worker_with(
        VLMFLOW_JOB_STUCK_SECONDS="20", VLMFLOW_JOB_CANCEL_GRACE_SECONDS="2", VLMFLOW_FAULT_HANG_AT_STEP="5"
    )
    stub = worker.stub()
    dataset = _dataset(stub, tmp_path / "data", tiny_model_path)
    request = _train("hangs", dataset, tiny_model_path, steps=8)
    started = time.monotonic()
    first = [r.event for r in stub.Train(request, timeout=300)]
    failed = first[-1].failed
    assert failed.reason == jobs_pb2.FAILURE_REASON_STUCK, first[-1]
    assert "sent no event for" in failed.message and "resume" in failed.message
    assert failed.last_checkpoint_uri.endswith("checkpoint-4")
    assert time.monotonic() - started < 120

    second = [r.event for r in stub.Train(request, timeout=300)]  # the retry: same id, a new attempt
    assert second[0].accepted.resumed_from_step == 4
    assert second[-1].WhichOneof("event") == "completed", second[-1]
    assert second[-1].completed.metrics["global_step"] == 8


def test_a_job_two_runs_wait_for_stops_only_when_the_last_lets_go(
    worker_with, tmp_path: Path, tiny_model_path: Path
) -> None:
    worker = worker_with(VLMFLOW_FAULT_STEP_SECONDS="0.5")
    stub = worker.stub()
    dataset = _dataset(stub, tmp_path / "data", tiny_model_path)
    first = stub.Train(_train("shared", dataset, tiny_model_path, steps=400, watcher="run-a"), timeout=300)
    for response in first:
        if response.event.WhichOneof("event") == "progress" and response.event.progress.step >= 1:
            break
    second = stub.Train(_train("shared", dataset, tiny_model_path, steps=400, watcher="run-b"), timeout=300)
    assert next(second).event.accepted.attached
    job = stub.GetJob(worker_pb2.GetJobRequest(job_id="shared")).job
    assert list(job.watchers) == ["run-a", "run-b"]

    left = stub.CancelJob(worker_pb2.CancelJobRequest(job_id="shared", watcher="run-a", wait=False)).job
    assert left.state == jobs_pb2.JOB_STATE_RUNNING and list(left.watchers) == ["run-b"]
    time.sleep(2)
    assert stub.GetJob(worker_pb2.GetJobRequest(job_id="shared")).job.state == jobs_pb2.JOB_STATE_RUNNING

    stopped = stub.CancelJob(worker_pb2.CancelJobRequest(job_id="shared", watcher="run-b", wait=True), timeout=120).job
    assert stopped.state == jobs_pb2.JOB_STATE_CANCELLED
    assert stopped.last_checkpoint_uri  # it checkpointed on the way out
    first.cancel()
    second.cancel()


def test_a_busy_worker_names_the_wait_in_a_trailer(worker_with, tmp_path: Path, tiny_model_path: Path) -> None:
    worker = worker_with(VLMFLOW_FAULT_STEP_SECONDS="0.5")
    stub = worker.stub()
    dataset = _dataset(stub, tmp_path / "data", tiny_model_path)
    running = stub.Train(_train("long", dataset, tiny_model_path, steps=400), timeout=300)
    next(running)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Train(_train("other", dataset, tiny_model_path, steps=4), timeout=60))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (ERROR_TYPE_TRAILER, "WorkerBusy") in tuple(err.value.trailing_metadata())
    assert "busy with: long" in err.value.details()
    stub.CancelJob(worker_pb2.CancelJobRequest(job_id="long", wait=True), timeout=120)
    running.cancel()
