"""Shared fixtures: a real worker process on a free port; the tiny Idefics3 model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from vlmflow.v1 import worker_pb2_grpc
from vlmflow_worker.fixtures.worker_process import start_worker_process

REPO_ROOT = Path(__file__).resolve().parents[2]

# The files that take minutes (measured on a clean clone), run first. With `-n 2 --dist loadfile` (scripts/test.sh)
# a file is one unit of work and the suite ends when its last unit does; in name order the 2-4 minute files came
# late and one core sat idle while the other finished them.
SLOW_FILES_FIRST = (
    "test_gpu_check.py",
    "test_architectures.py",
    "test_tracking_mlflow.py",
    "test_train_families.py",
    "test_job_watch.py",
    "test_video_families.py",
    "test_grpo.py",
    "test_job_lease.py",
    "test_dpo.py",
    "test_grpo_learns.py",
    "test_sft.py",
    "test_data_workers.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow files first, each file's tests in their own order (a stable sort), every other file after them."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@dataclass
class WorkerProcess:
    process: subprocess.Popen[str]
    port: int
    artifact_root: Path
    metrics_address: str | None = None  # host:port of /metrics, when started with --metrics-address

    def stub(self) -> worker_pb2_grpc.WorkerServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return worker_pb2_grpc.WorkerServiceStub(channel)


def start_worker(artifact_root: Path, *extra: str) -> WorkerProcess:
    """Starts `python -m vlmflow_worker serve --port 0` and waits for its 'listening' line; its later log lines go to
    stderr, which pytest captures and shows for failing tests."""
    args = ["--artifact-root", str(artifact_root), *extra]
    process, entry = start_worker_process(args, on_line=lambda line: sys.stderr.write(line))
    return WorkerProcess(process, int(entry["port"]), artifact_root, entry.get("metrics_address"))


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("artifacts"))
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=30)


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny random-weight Idefics3 model (real processor), built once at <repo>/.state/models/tiny-idefics3
    (or $VLMFLOW_TINY_MODEL) and reused across runs."""
    from vlmflow_worker.fixtures.tiny_model import build_tiny_model

    default = REPO_ROOT / ".state" / "models" / "tiny-idefics3"
    return build_tiny_model(Path(os.environ.get("VLMFLOW_TINY_MODEL", default)))


@pytest.fixture(scope="session")
def tiny_smolvlm2_path() -> Path:
    """The tiny random-weight SmolVLM2 model (real image and video processors), built once at
    <repo>/.state/models/tiny-smolvlm2 (or $VLMFLOW_TINY_SMOLVLM2) and reused across runs."""
    from vlmflow_worker.fixtures.tiny_smolvlm2 import build_tiny_smolvlm2

    default = REPO_ROOT / ".state" / "models" / "tiny-smolvlm2"
    return build_tiny_smolvlm2(Path(os.environ.get("VLMFLOW_TINY_SMOLVLM2", default)))


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_path() -> Path:
    """The tiny random-weight Qwen2.5-VL model (real image and video processors), built once at
    <repo>/.state/models/tiny-qwen2_5_vl (or $VLMFLOW_TINY_QWEN2_5_VL) and reused across runs."""
    from vlmflow_worker.fixtures.tiny_qwen2_5_vl import build_tiny_qwen2_5_vl

    default = REPO_ROOT / ".state" / "models" / "tiny-qwen2_5_vl"
    return build_tiny_qwen2_5_vl(Path(os.environ.get("VLMFLOW_TINY_QWEN2_5_VL", default)))


@pytest.fixture(scope="session")
def tiny_qwen3_vl_path() -> Path:
    """The tiny random-weight Qwen3-VL model (real image and video processors), built once at
    <repo>/.state/models/tiny-qwen3_vl (or $VLMFLOW_TINY_QWEN3_VL) and reused across runs."""
    from vlmflow_worker.fixtures.tiny_qwen3_vl import build_tiny_qwen3_vl

    default = REPO_ROOT / ".state" / "models" / "tiny-qwen3_vl"
    return build_tiny_qwen3_vl(Path(os.environ.get("VLMFLOW_TINY_QWEN3_VL", default)))
