"""The worker process: binds, answers Health for real, names unimplemented RPCs, stops cleanly."""

from __future__ import annotations

import signal

import pytest
import torch

from vlmflow.v1 import worker_pb2
from vlmflow_worker.serve.settings import WorkerSettings

from .conftest import WorkerProcess, start_worker


def test_health_reports_device_versions_and_capacity(worker: WorkerProcess) -> None:
    reply = worker.stub().Health(worker_pb2.HealthRequest(), timeout=30)
    assert reply.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.__version__.startswith(reply.versions["torch"])
    for lib in ("python", "transformers", "trl", "peft", "vlmflow-worker"):
        assert reply.versions[lib], lib
    assert reply.job_capacity >= 1
    assert reply.jobs_running == 0
    assert reply.artifact_root == str(worker.artifact_root.resolve())
    assert len(reply.gpus) == torch.cuda.device_count()


def test_binds_loopback_by_default() -> None:
    assert WorkerSettings().host == "127.0.0.1"


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="port must be between"):
        WorkerSettings(port=70000)


def test_sigterm_stops_the_server_cleanly(tmp_path) -> None:
    proc = start_worker(tmp_path)
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(timeout=30) == 0


def test_port_in_use_is_a_clear_error(worker: WorkerProcess, tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "vlmflow_worker", "serve", "--port", str(worker.port), "--artifact-root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "in use" in result.stderr or "bind" in result.stderr
