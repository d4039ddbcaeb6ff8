"""Kill-and-resume checks shared by the preference and RL training tests (DPO, GRPO): a training job in its own
process, as the worker runs one, SIGKILLed after a checkpoint, resumed, and compared with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.jobs import eventlog

# argv: module (dpo, grpo), request file, job folder, artifact root.
RUN_TRAIN_JOB = """
import importlib
import sys
from pathlib import Path
from vlmflow.v1 import jobs_pb2
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.serve.settings import WorkerSettings
module = importlib.import_module("vlmflow_worker.train." + sys.argv[1])
request = jobs_pb2.TrainRequest.FromString(Path(sys.argv[2]).read_bytes())
job = Path(sys.argv[3])
job.mkdir(exist_ok=True)
module.run(request, JobContext(sys.argv[1], job, WorkerSettings(port=0, artifact_root=Path(sys.argv[4]))))
"""


def train_process(
    module: str, request: jobs_pb2.TrainRequest, root: Path, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`train.<module>.run(request)` in a child process; its job folder is `root/<name>-job`."""
    (root / f"{name}.bin").write_bytes(request.SerializeToString())
    argv = [
        sys.executable,
        "-c",
        RUN_TRAIN_JOB,
        module,
        str(root / f"{name}.bin"),
        str(root / f"{name}-job"),
        str(root),
    ]
    return subprocess.Popen(argv, env={**os.environ, **(env or {})})


def kill_after_checkpoint(process: subprocess.Popen, checkpoint: Path) -> None:
    """SIGKILL `process` once `checkpoint` is complete. It must hold both adapters of a run that continues an adapter
    (the policy and TRL's frozen "ref" copy)."""
    deadline = time.monotonic() + 600
    while not checkpoint.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.is_dir() and (checkpoint / "ref" / "adapter_model.safetensors").is_file()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def assert_resumed_from(job: Path, checkpoint: str) -> None:
    logs = (job / eventlog.EVENTS).read_bytes()
    assert b"resuming from" in logs and checkpoint.encode() in logs


def step_values(output: Path, *keys: str) -> dict[int, tuple[float, ...]]:
    """Step -> the `keys` of its training log line, the last line of each step winning (a resumed run logs the steps
    after its checkpoint again)."""
    lines = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    return {e["step"]: tuple(e[k] for k in keys) for e in lines if all(k in e for k in keys)}


def assert_same_curve(expected: dict[int, tuple[float, ...]], got: dict[int, tuple[float, ...]], steps: int) -> None:
    assert sorted(expected) == sorted(got) == list(range(1, steps + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-3, abs=1e-5), (step, expected, got)


def assert_same_adapter(a: Path, b: Path, moved_from: Path) -> None:
    """Adapters `a` and `b` are equal, and differ from the adapter they continued (`moved_from`): the comparison is not
    between two untouched copies."""
    with (
        safe_open(a / "adapter_model.safetensors", "pt") as x,
        safe_open(b / "adapter_model.safetensors", "pt") as y,
        safe_open(moved_from / "adapter_model.safetensors", "pt") as start,
    ):
        assert sorted(x.keys()) == sorted(y.keys())
        for name in x.keys():
            assert torch.allclose(x.get_tensor(name), y.get_tensor(name), rtol=1e-4, atol=1e-6), name
        assert [n for n in start.keys() if not torch.equal(start.get_tensor(n), y.get_tensor(n))]
