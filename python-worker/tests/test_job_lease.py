"""One owner per job across hosts: two real workers on one artifact store, as two GPU hosts on shared storage.

A request for a job the other worker runs attaches to it through the store (no second training); when the owner
dies, the follower ends the job's log once its lease stops moving, and the retry takes the job over from the newest
checkpoint. Both workers run on this machine, so the lease's same-host shortcut (a dead pid) would answer at once:
VLMFLOW_WORKER_HOST_ID gives each worker a host id of its own, so the cross-host path (a lease watched for
VLMFLOW_JOB_LEASE_SECONDS) is what runs.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from vlmflow.v1 import common_pb2, jobs_pb2, worker_pb2
from vlmflow_worker.fixtures.synthetic import generate

from .conftest import WorkerProcess, start_worker

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")
LEASE_S = 4


def _job_processes(folder: Path) -> list[int]:
    """Job processes running for `folder` (their command line names it), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Forked job processes name their job in a title (argv joined by spaces), fresh ones in their argv.
            cmdline = re.split(rb"[\0 ]+", (entry / "cmdline").read_bytes())
            state = (entry / "status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and b"vlmflow_worker.jobs.child" in cmdline and str(folder).encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def two_hosts(tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "data"
    generate("shape_colour", 16, 0, data)
    root = tmp_path / "shared-store"
    monkeypatch.setenv("VLMFLOW_JOB_LEASE_SECONDS", str(LEASE_S))
    monkeypatch.setenv("VLMFLOW_FAULT_STEP_SECONDS", "0.5")
    workers: list[WorkerProcess] = []
    for host in ("gpu-host-a", "gpu-host-b"):
        monkeypatch.setenv("VLMFLOW_WORKER_HOST_ID", host)
        workers.append(start_worker(root, "--data-root", str(data), "--data-root", str(tiny_model_path)))
    yield workers, root, data
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
            worker.process.wait(timeout=60)


def test_one_training_per_job_across_two_workers_and_a_dead_owner_is_taken_over(two_hosts, tiny_model_path) -> None:
    (a, b), root, data = two_hosts
    prep = jobs_pb2.PrepareDatasetRequest(
        job_id="prep",
        sources=[jobs_pb2.DatasetSource(uri=str(data / "data.jsonl"))],
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        max_length=256,
    )
    dataset = [r.event for r in a.stub().PrepareDataset(prep, timeout=300)][-1].completed.artifacts["dataset"]
    train = jobs_pb2.TrainRequest(
        job_id="shared/sft",
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        dataset_uri=dataset,
        output_uri="runs/shared/sft",
        lora=jobs_pb2.LoraConfig(r=4, alpha=8, dropout=0.0),
        training=jobs_pb2.TrainingConfig(
            max_steps=24, micro_batch_size=2, logging_steps=1, save_steps=3, learning_rate=1e-3, seed=1
        ),
    )
    folder = root / "jobs" / "shared%2Fsft"
    most_at_once = 0
    sampling = True

    def sample() -> None:  # the process table, throughout
        nonlocal most_at_once
        while sampling:
            most_at_once = max(most_at_once, len(_job_processes(folder)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # Host A trains; B is asked for the same job (A's TS worker died, the retry landed on B's): B attaches.
        on_a = a.stub().Train(train, timeout=600)
        for response in on_a:
            if response.event.WhichOneof("event") == "checkpoint_saved":
                break
        on_b = b.stub().Train(train, timeout=600)
        first = next(on_b).event
        assert first.accepted.attached, first
        assert b.stub().GetJob(worker_pb2.GetJobRequest(job_id="shared/sft")).job.state == jobs_pb2.JOB_STATE_RUNNING
        seen_on_b = [next(on_b).event for _ in range(3)]  # A's events, relayed by B from the store
        assert all(e.job_id == "shared/sft" for e in seen_on_b)

        # Host A dies (its job process with it). B notices once A's lease stops moving and ends the log.
        killed_at = time.monotonic()
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(timeout=30)
        rest = [r.event for r in on_b]
        noticed_s = time.monotonic() - killed_at
        assert rest[-1].WhichOneof("event") == "failed", rest[-1]
        assert "lease on the shared store did not move" in rest[-1].failed.message
        assert LEASE_S <= noticed_s < LEASE_S + 15

        # The retry on B takes the job over and resumes from the newest checkpoint A left.
        resumed = [r.event for r in b.stub().Train(train, timeout=600)]
        assert not resumed[0].accepted.attached and resumed[0].accepted.resumed_from_step >= 3
        assert resumed[-1].WhichOneof("event") == "completed", resumed[-1]
        assert resumed[-1].completed.metrics["global_step"] == 24
    finally:
        sampling = False
        sampler.join(timeout=5)
    assert most_at_once == 1  # never two trainings of the job, on either host
    print(f"durability: lease takeover noticed after {noticed_s:.1f} s (lease {LEASE_S} s)")
