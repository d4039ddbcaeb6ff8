"""Job processes forked from the worker's fork server (jobs/forkserver.py), through a real worker: one server per
worker, started at the first job; each job process is its child, named by its job folder in /proc; a killed server
takes its running job with it, which then fails typed with the kill, and the next job gets a new server; a killed
worker takes the server with it. VLMFLOW_JOB_FORKSERVER=0: each job is the worker's own fresh process."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.jobs import forkserver

from .conftest import WorkerProcess, start_worker
from .test_jobs import _alive, prep_request

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> list[str]:
    return re.split(r"[\0 ]+", Path(f"/proc/{pid}/cmdline").read_text())


def _fork_servers(worker_pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if forkserver.MODULE in _cmdline(int(entry.name)) and _ppid(int(entry.name)) == worker_pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    generate("count_dots", 8, 0, tmp_path / "data")
    return tmp_path / "data"


def _start_long_training(worker: WorkerProcess, job_id: str, dataset: str, model: Path) -> tuple[object, int]:
    """A training that runs until stopped (slowed steps); returns its open stream and its job process, once training."""
    train = jobs_pb2.TrainRequest(
        job_id=job_id,
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=common_pb2.ModelRef(model_id=str(model)),
        dataset_uri=dataset,
        output_uri=f"runs/{job_id}",
        training=jobs_pb2.TrainingConfig(max_steps=10_000, micro_batch_size=1, logging_steps=1, save_steps=1000),
    )
    stream = worker.stub().Train(train, timeout=180)
    for response in stream:
        if response.event.WhichOneof("event") == "progress" and response.event.progress.step >= 1:
            break
    return stream, int((worker.artifact_root / "jobs" / job_id / "child.pid").read_text())


def test_jobs_are_forked_from_one_server_and_a_killed_server_fails_its_job_and_is_replaced(
    tmp_path: Path, data: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMFLOW_FAULT_STEP_SECONDS", "0.5")
    worker = start_worker(tmp_path / "artifacts", "--data-root", str(data), "--data-root", str(tiny_model_path))
    try:
        assert _fork_servers(worker.process.pid) == []  # a worker that has run no job has none
        stub = worker.stub()
        done = [r.event for r in stub.PrepareDataset(prep_request("prep", data / "data.jsonl"), timeout=120)]
        assert done[-1].WhichOneof("event") == "completed"
        [server] = _fork_servers(worker.process.pid)

        stream, job = _start_long_training(worker, "long", done[-1].completed.artifacts["dataset"], tiny_model_path)
        assert _fork_servers(worker.process.pid) == [server]  # the same server forked the second job
        assert _ppid(job) == server
        cmdline = _cmdline(job)
        assert "vlmflow_worker.jobs.child" in cmdline and str(worker.artifact_root / "jobs" / "long") in cmdline

        os.kill(server, signal.SIGKILL)  # the job dies with its server, and the worker says how it ended
        rest = [r.event for r in stream]
        assert rest[-1].WhichOneof("event") == "failed"
        assert rest[-1].failed.reason == jobs_pb2.FAILURE_REASON_INTERNAL
        assert "killed by signal 9" in rest[-1].failed.message
        _wait_gone(job)

        again = [r.event for r in stub.PrepareDataset(prep_request("prep 2", data / "data.jsonl"), timeout=120)]
        assert again[-1].WhichOneof("event") == "completed"
        [replacement] = _fork_servers(worker.process.pid)
        assert replacement != server

        worker.process.send_signal(signal.SIGKILL)  # a killed worker leaves no fork server behind
        worker.process.wait(timeout=30)
        _wait_gone(replacement)
    finally:
        if worker.process.poll() is None:
            worker.process.kill()


def test_without_the_fork_server_a_job_is_the_workers_own_fresh_process(
    tmp_path: Path, data: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(forkserver.ENV, "0")
    monkeypatch.setenv("VLMFLOW_FAULT_STEP_SECONDS", "0.5")
    worker = start_worker(tmp_path / "artifacts", "--data-root", str(data), "--data-root", str(tiny_model_path))
    try:
        stub = worker.stub()
        done = [r.event for r in stub.PrepareDataset(prep_request("prep", data / "data.jsonl"), timeout=120)]
        _, job = _start_long_training(worker, "long", done[-1].completed.artifacts["dataset"], tiny_model_path)
        assert _ppid(job) == worker.process.pid and _fork_servers(worker.process.pid) == []
        assert _cmdline(job)[1:4] == ["-m", "vlmflow_worker.jobs.child", str(worker.artifact_root / "jobs" / "long")]
    finally:
        worker.process.terminate()
        worker.process.wait(timeout=60)
