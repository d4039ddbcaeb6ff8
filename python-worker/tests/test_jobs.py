"""The job framework through the real worker: ids, replay after a worker restart, a job orphaned by a dead worker,
WatchJob / GetJob / ListJobs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from vlmflow.v1 import common_pb2, jobs_pb2, worker_pb2
from vlmflow_worker.fixtures.synthetic import generate

from .conftest import start_worker

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")


def prep_request(job_id: str, data: Path) -> jobs_pb2.PrepareDatasetRequest:
    return jobs_pb2.PrepareDatasetRequest(job_id=job_id, sources=[jobs_pb2.DatasetSource(uri=str(data))])


def test_finished_jobs_replay_after_restart_and_a_job_orphaned_by_a_dead_worker_fails_internal(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    root, data = tmp_path / "artifacts", tmp_path / "data"
    generate("count_dots", 8, 0, data)
    first = start_worker(root, "--data-root", str(data))
    try:
        stub = first.stub()
        done = [r.event for r in stub.PrepareDataset(prep_request("jobs/prep 1", data / "data.jsonl"), timeout=120)]
        assert done[-1].WhichOneof("event") == "completed"
        dataset = done[-1].completed.artifacts["dataset"]
        with pytest.raises(grpc.RpcError) as err:  # same id, other kind
            list(stub.Train(jobs_pb2.TrainRequest(job_id="jobs/prep 1", kind=jobs_pb2.TRAIN_KIND_SFT), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # validation runs first: no dataset_uri

        train = jobs_pb2.TrainRequest(
            job_id="long",
            kind=jobs_pb2.TRAIN_KIND_SFT,
            model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
            dataset_uri=dataset,
            output_uri="runs/long",
            training=jobs_pb2.TrainingConfig(max_steps=10_000, micro_batch_size=1, logging_steps=1, save_steps=5),
        )
        for response in stub.Train(train, timeout=120):
            if response.event.WhichOneof("event") == "progress" and response.event.progress.step >= 1:
                break
        child = int((root / "jobs" / "long" / "child.pid").read_text())
        first.process.send_signal(signal.SIGKILL)  # the worker dies; its job must not outlive it
        first.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if first.process.poll() is None:
            first.process.kill()

    second = start_worker(root, "--data-root", str(data))
    try:
        stub = second.stub()
        replay = [r.event for r in stub.PrepareDataset(prep_request("jobs/prep 1", data / "data.jsonl"), timeout=60)]
        assert [e.sequence for e in replay] == [e.sequence for e in done] and replay[0].accepted.attached
        watched = [r.event for r in stub.WatchJob(worker_pb2.WatchJobRequest(job_id="jobs/prep 1"), timeout=60)]
        assert watched[-1] == done[-1]

        orphan = stub.GetJob(worker_pb2.GetJobRequest(job_id="long")).job
        assert orphan.state == jobs_pb2.JOB_STATE_FAILED
        assert orphan.failed.reason == jobs_pb2.FAILURE_REASON_INTERNAL and "worker stopped" in orphan.failed.message
        listed = {j.job_id: j.state for j in stub.ListJobs(worker_pb2.ListJobsRequest()).jobs}
        assert listed == {"jobs/prep 1": jobs_pb2.JOB_STATE_SUCCEEDED, "long": jobs_pb2.JOB_STATE_FAILED}
        only_prep = stub.ListJobs(worker_pb2.ListJobsRequest(kind=jobs_pb2.JOB_KIND_PREPARE_DATASET)).jobs
        assert [j.job_id for j in only_prep] == ["jobs/prep 1"]
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(worker_pb2.GetJobRequest(job_id="never"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            list(stub.PrepareDataset(prep_request("", data / "data.jsonl"), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "job_id" in err.value.details()
    finally:
        second.process.terminate()
        second.process.wait(timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a parent that died) counts as gone
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
