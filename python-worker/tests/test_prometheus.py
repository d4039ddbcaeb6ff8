"""The worker's Prometheus endpoint: its address setting, a clear error on a taken port, Generate's series moving
on a real worker, and the job series computed from job events (training steps across a resume, speed, outcomes,
waiting). The job series on a real training are scraped in test/metrics.test.ts, beside the TS worker's."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WorkerProcess, start_worker
from vlmflow.v1 import common_pb2, generate_pb2, jobs_pb2, worker_pb2
from vlmflow_worker.serve import metrics as metrics_module
from vlmflow_worker.serve.metrics import WorkerMetrics
from vlmflow_worker.serve.settings import WorkerSettings, parse_address

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data"


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def samples_of(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
    }


# ---- the setting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9465", ("127.0.0.1", 9465)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::]:9465", ("::", 9465))],
)
def test_metrics_address_parses_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_address("metrics_address", value) == expected


@pytest.mark.parametrize("value", ["9465", "127.0.0.1", ":9465", "127.0.0.1:http", "127.0.0.1:70000", "::1:9465"])
def test_a_bad_metrics_address_is_refused_naming_the_setting(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"metrics_address \(VLMFLOW_WORKER_METRICS_ADDRESS\): .* is not host:port"):
        WorkerSettings(metrics_address=value, artifact_root=tmp_path)


def test_metrics_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLMFLOW_WORKER_METRICS_ADDRESS", "127.0.0.1:9999")
    assert WorkerSettings(artifact_root=tmp_path).metrics_address == "127.0.0.1:9999"
    monkeypatch.setenv("VLMFLOW_WORKER_METRICS_ADDRESS", "")
    assert WorkerSettings(artifact_root=tmp_path).metrics_address is None  # unset: no endpoint


def test_a_taken_metrics_port_stops_the_worker_with_a_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "vlmflow_worker", "serve", "--port", "0", "--artifact-root", str(tmp_path)]
            + ["--metrics-address", address],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"metrics_address {address}: cannot serve metrics there (Address already in use)" in result.stderr
    assert "--metrics-address" in result.stderr


# ---- a real worker ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("artifacts"), "--metrics-address", "127.0.0.1:0", "--data-root", str(DATA.parent)
    )
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=30)


def test_the_endpoint_serves_every_job_kind_and_no_gpu_series_on_cpu(served: WorkerProcess) -> None:
    assert served.metrics_address is not None and not served.metrics_address.endswith(":0")
    now = scrape(served.metrics_address)
    assert now[("vlmflow_job_capacity", ())] == 1
    for kind in ("prepare_dataset", "train_sft", "train_dpo", "evaluate", "export"):
        assert now[("vlmflow_jobs_running", (("kind", kind),))] == 0
        assert now[("vlmflow_jobs_waiting", (("kind", kind),))] == 0
    assert now[("vlmflow_train_steps_total", (("kind", "train_sft"),))] == 0
    assert not [name for name, _ in now if name.startswith("vlmflow_gpu_")]  # no GPU here, so no GPU series
    assert ("process_resident_memory_bytes", ()) in now


def test_generate_moves_latency_items_and_request_codes(served: WorkerProcess, tiny_model_path: Path) -> None:
    assert served.metrics_address is not None
    stub = served.stub()
    before = scrape(served.metrics_address)
    item = generate_pb2.GenerateItem(
        id="a", task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(uri=str(DATA / "1.jpg"))]
    )
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        items=[item, item],
        generation=common_pb2.GenerationConfig(max_new_tokens=4),
    )
    response = stub.Generate(request, timeout=300)
    tokens = sum(r.answer_tokens for r in response.results)
    bad = worker_pb2.GenerateRequest(model=common_pb2.ModelRef(model_id=str(tiny_model_path)))  # no items
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(bad, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(served.metrics_address)

    def moved(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0)

    assert moved("vlmflow_generate_request_seconds_count") == 1  # the refused request is not a latency
    assert 0 < moved("vlmflow_generate_request_seconds_sum") <= response.timings.total_seconds + 1
    assert moved("vlmflow_generate_items_total") == 2
    assert moved("vlmflow_generate_answer_tokens_total") == tokens
    assert moved("vlmflow_generate_requests_total", (("code", "OK"),)) == 1
    assert moved("vlmflow_generate_requests_total", (("code", "INVALID_ARGUMENT"),)) == 1
    assert (
        after[("vlmflow_generate_request_seconds_bucket", (("le", "+Inf"),))]
        == after[("vlmflow_generate_request_seconds_count", ())]
    )


# ---- job series from job events --------------------------------------------------------------------------------


def _event(**oneof) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(job_id="run-1/sft", **oneof)


def _progress(step: int, samples_per_second: float = 0.0) -> jobs_pb2.JobEvent:
    return _event(
        progress=jobs_pb2.JobProgress(
            phase="training",
            step=step,
            samples_per_second=samples_per_second,
            tokens_per_second=10 * samples_per_second,
        )
    )


SFT = jobs_pb2.JOB_KIND_TRAIN_SFT
KIND = (("kind", "train_sft"),)
JOB = (("job_id", "run-1/sft"), ("kind", "train_sft"))


def test_training_steps_count_once_across_a_resume_and_speed_lasts_while_the_job_runs() -> None:
    m = WorkerMetrics()
    m.job_started("run-1/sft", SFT)
    m.job_events("run-1/sft", SFT, [_event(accepted=jobs_pb2.JobAccepted(kind=SFT)), _progress(0), _progress(1)])
    m.job_events("run-1/sft", SFT, [_progress(2, samples_per_second=8.0), _progress(2), _progress(3)])
    now = samples_of(m)
    assert now[("vlmflow_train_steps_total", KIND)] == 3
    assert now[("vlmflow_jobs_running", KIND)] == 1
    assert now[("vlmflow_train_samples_per_second", JOB)] == 8.0
    assert now[("vlmflow_train_tokens_per_second", JOB)] == 80.0

    cancelled = jobs_pb2.JobFailed(reason=jobs_pb2.FAILURE_REASON_CANCELLED, message="cancelled")
    m.job_ended("run-1/sft", SFT, _event(failed=cancelled))
    # The next attempt resumes from step 3's checkpoint: its first progress repeats step 3, which is not counted.
    m.job_started("run-1/sft", SFT)
    resumed = jobs_pb2.JobAccepted(kind=SFT, resumed_from_step=3)
    m.job_events("run-1/sft", SFT, [_event(accepted=resumed), _progress(3), _progress(4), _progress(5)])
    m.job_ended("run-1/sft", SFT, _event(completed=jobs_pb2.JobCompleted()))
    now = samples_of(m)
    assert now[("vlmflow_train_steps_total", KIND)] == 5
    assert now[("vlmflow_jobs_running", KIND)] == 0
    assert now[("vlmflow_jobs_started_total", KIND)] == 2
    assert now[("vlmflow_jobs_ended_total", (*KIND, ("outcome", "cancelled"), ("reason", "cancelled")))] == 1
    assert now[("vlmflow_jobs_ended_total", (*KIND, ("outcome", "succeeded"), ("reason", "none")))] == 1
    assert ("vlmflow_train_samples_per_second", JOB) not in now  # an ended job's speed is gone, not stale


def test_a_failed_job_counts_under_its_reason_and_other_kinds_count_no_steps() -> None:
    m = WorkerMetrics()
    prep = jobs_pb2.JOB_KIND_PREPARE_DATASET
    m.job_started("p", prep)
    m.job_events("p", prep, [_progress(500)])  # rows read, not training steps
    oom = jobs_pb2.JobFailed(reason=jobs_pb2.FAILURE_REASON_OUT_OF_MEMORY, message="oom")
    m.job_ended("p", prep, _event(failed=oom))
    now = samples_of(m)
    assert now[("vlmflow_train_steps_total", KIND)] == 0
    labels = (("kind", "prepare_dataset"), ("outcome", "failed"), ("reason", "out_of_memory"))
    assert now[("vlmflow_jobs_ended_total", labels)] == 1


def test_a_job_refused_for_want_of_a_slot_waits_until_it_starts_or_stops_asking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = WorkerMetrics()
    m.job_refused("a", SFT)
    m.job_refused("a", SFT)  # the same job asking again is one waiting job
    m.job_refused("b", jobs_pb2.JOB_KIND_EVALUATE)
    now = samples_of(m)
    assert now[("vlmflow_jobs_waiting", KIND)] == 1
    assert now[("vlmflow_jobs_waiting", (("kind", "evaluate"),))] == 1
    m.job_started("a", SFT)
    assert samples_of(m)[("vlmflow_jobs_waiting", KIND)] == 0
    monkeypatch.setattr(metrics_module, "WAITING_FORGET_S", -1.0)  # b's run stopped asking long ago
    assert samples_of(m)[("vlmflow_jobs_waiting", (("kind", "evaluate"),))] == 0


def test_gpu_memory_is_read_through_nvml_for_the_workers_own_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tests.test_devices import FakeNvml

    def no_cuda(*args, **kwargs):
        raise AssertionError("a scrape called torch.cuda (it creates a CUDA context on the GPU)")

    for name in ("is_available", "device_count", "mem_get_info", "memory_allocated", "init"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())  # two 80 GB GPUs: 10 and 11 GB in use
    m = WorkerMetrics()
    m.watch_gpus([g for g in metrics_module.devices.read_gpus() if g.index == 1])  # started with CUDA_VISIBLE_DEVICES=1
    now = samples_of(m)
    gpu1 = (("gpu", "1"), ("name", "NVIDIA A100-SXM4-80GB"))
    assert now[("vlmflow_gpu_memory_used_bytes", gpu1)] == 11 << 30
    assert now[("vlmflow_gpu_memory_total_bytes", gpu1)] == 80 << 30
    assert not [labels for name, labels in now if name.startswith("vlmflow_gpu_") and ("gpu", "0") in labels]
