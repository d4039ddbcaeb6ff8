"""Job GPUs (devices.py): slots over a faked GPU list, the inference GPU, the settings' errors, and Health reading
GPUs through NVML without torch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vlmflow.v1 import jobs_pb2
from vlmflow_worker import devices
from vlmflow_worker.devices import Gpu, GpuSlots
from vlmflow_worker.errors import FailedPrecondition, WorkerBusy
from vlmflow_worker.serve.settings import WorkerSettings


def fake_gpus(n: int) -> list[Gpu]:
    return [Gpu(i, f"GPU-{i:04d}-fake", "NVIDIA H200", 141 << 30, 140 << 30, (9, 0)) for i in range(n)]


def indices(gpus: list[Gpu]) -> list[int]:
    return [g.index for g in gpus]


def test_eight_gpus_two_per_job_are_four_slots_each_owning_its_gpus() -> None:
    slots = GpuSlots(fake_gpus(8), gpus_per_job=2, inference_gpu=None)
    assert slots.capacity == 4
    held = [slots.assign(f"job-{i}", slots.wanted(num_processes=1)) for i in range(4)]
    assert all(len(gpus) == 2 for gpus in held)
    assert sorted(i for gpus in held for i in indices(gpus)) == list(range(8))  # no GPU given twice
    with pytest.raises(WorkerBusy, match=r"runs 4 job\(s\) at once on 8 GPU\(s\) and is busy with: job-0 \(GPUs"):
        slots.assign("job-4", 2)
    freed = slots.release("job-2")
    assert slots.assign("job-4", 2) == freed  # the slot comes back with its GPUs


def test_a_multi_gpu_training_takes_a_gpu_per_process_and_too_many_is_a_clear_refusal() -> None:
    slots = GpuSlots(fake_gpus(4), gpus_per_job=1, inference_gpu=None)
    assert slots.wanted(num_processes=3) == 3
    assert len(slots.assign("ddp", 3)) == 3
    assert len(slots.assign("single", 1)) == 1
    slots.release("ddp")
    slots.release("single")
    with pytest.raises(FailedPrecondition, match=r"needs 5 GPUs .*training.num_processes.*has 4 for jobs"):
        slots.assign("huge", slots.wanted(num_processes=5))


def test_an_inference_gpu_of_its_own_is_never_given_to_a_job() -> None:
    slots = GpuSlots(fake_gpus(8), gpus_per_job=2, inference_gpu=7)
    assert slots.capacity == 3  # 7 job GPUs, 2 per job
    assert slots.inference is not None and slots.inference.index == 7 and not slots.inference_shared
    held = [i for n in range(3) for i in indices(slots.assign(f"job-{n}", 2))]
    assert 7 not in held
    assert not any(slots.lends_inference(slots._held[f"job-{n}"]) for n in range(3))


def test_a_shared_inference_gpu_is_lent_to_a_job_only_when_no_other_is_free() -> None:
    slots = GpuSlots(fake_gpus(2), gpus_per_job=1, inference_gpu=None)
    assert slots.inference is not None and slots.inference.index == 0 and slots.inference_shared
    first = slots.assign("first", 1)
    assert indices(first) == [1] and not slots.lends_inference(first)
    second = slots.assign("second", 1)
    assert indices(second) == [0] and slots.lends_inference(second)


def test_on_cpu_jobs_get_no_gpu_and_capacity_is_the_setting_or_one() -> None:
    slots = GpuSlots([], job_capacity=0)
    assert slots.capacity == 1 and slots.wanted(num_processes=2) == 0 and slots.inference is None
    assert slots.assign("a", 0) == []
    with pytest.raises(WorkerBusy, match=r"runs 1 job\(s\) at once and is busy with: a;"):
        slots.assign("b", 0)
    assert GpuSlots([], job_capacity=3).capacity == 3


def test_device_settings_are_checked_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"VLMFLOW_INFERENCE_GPU=3: this worker has GPUs 0, 1"):
        GpuSlots(fake_gpus(2), inference_gpu=3)
    with pytest.raises(ValueError, match=r"VLMFLOW_INFERENCE_GPU=0: this worker has no GPU"):
        GpuSlots([], inference_gpu=0)
    with pytest.raises(ValueError, match=r"VLMFLOW_GPUS_PER_JOB=2: this worker has 1 GPU\(s\) for jobs \(GPU 1 is inf"):
        GpuSlots(fake_gpus(2), gpus_per_job=2, inference_gpu=1)
    with pytest.raises(ValueError, match=r"VLMFLOW_JOB_CAPACITY=5: this worker has 4 job slot\(s\)"):
        GpuSlots(fake_gpus(4), job_capacity=5)
    assert GpuSlots(fake_gpus(4), job_capacity=2).capacity == 2  # fewer jobs than slots is allowed

    monkeypatch.setenv("VLMFLOW_GPUS_PER_JOB", "0")
    with pytest.raises(ValueError, match=r"gpus_per_job \(VLMFLOW_GPUS_PER_JOB\) must be >= 1"):
        WorkerSettings()
    monkeypatch.setenv("VLMFLOW_GPUS_PER_JOB", "2")
    monkeypatch.setenv("VLMFLOW_INFERENCE_GPU", "last")
    with pytest.raises(ValueError, match=r"VLMFLOW_INFERENCE_GPU='last' is not an integer"):
        WorkerSettings()
    monkeypatch.setenv("VLMFLOW_INFERENCE_GPU", "3")
    settings = WorkerSettings()
    assert (settings.gpus_per_job, settings.inference_gpu) == (2, 3)
    monkeypatch.setenv("VLMFLOW_INFERENCE_GPU", "")
    assert WorkerSettings().inference_gpu is None


def test_cuda_visible_devices_of_the_worker_narrows_its_gpus() -> None:
    gpus = fake_gpus(4)
    assert indices(devices.visible(gpus, None)) == [0, 1, 2, 3]
    assert indices(devices.visible(gpus, "2,0")) == [2, 0]
    assert indices(devices.visible(gpus, "GPU-0003")) == [3]  # a UUID prefix, as CUDA accepts
    assert indices(devices.visible(gpus, "")) == []
    assert devices.cuda_visible_devices(gpus[1:3]) == "GPU-0001-fake,GPU-0002-fake"


def test_the_inference_gate_empties_caches_and_refuses_while_a_job_has_the_gpu() -> None:
    gate = devices.InferenceGate()
    emptied: list[str] = []
    gate.on_lend(lambda: emptied.append("cache"))
    gate.check()
    gate.lend("train-1", 0)
    assert emptied == ["cache"]
    with pytest.raises(WorkerBusy, match=r"inference GPU 0 is lent to job 'train-1'.*VLMFLOW_INFERENCE_GPU"):
        gate.check()
    gate.take_back("other")  # only the job that has it gives it back
    with pytest.raises(WorkerBusy):
        gate.check()
    gate.take_back("train-1")
    gate.check()


class FakeNvml(types.ModuleType):
    """pynvml over two fake GPUs; NVMLError when `broken`."""

    class NVMLError(Exception):
        pass

    def __init__(self, broken: bool = False) -> None:
        super().__init__("pynvml")
        self.broken = broken

    def nvmlInit(self) -> None:  # noqa: N802
        if self.broken:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int):  # noqa: N802
        return types.SimpleNamespace(total=80 << 30, free=(70 - handle) << 30)

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return f"GPU-{handle}"

    def nvmlDeviceGetName(self, handle: int) -> str:  # noqa: N802
        return "NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:  # noqa: N802
        return (8, 0)

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return 12040

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "550.54.15"


def test_health_reads_gpus_through_nvml_and_never_torch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vlmflow_worker.serve import health

    def no_cuda(*args, **kwargs):
        raise AssertionError("Health called torch.cuda (it creates a CUDA context on the GPU)")

    for name in ("is_available", "device_count", "mem_get_info", "get_device_name", "get_device_properties", "init"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    slots = devices.plan(WorkerSettings(gpus_per_job=1))
    assert [g.uuid for g in slots.gpus] == ["GPU-0", "GPU-1"] and slots.capacity == 2
    reply = health.gpus(slots)
    assert [(g.index, g.name, g.free_memory_bytes) for g in reply] == [
        (0, "NVIDIA A100-SXM4-80GB", 70 << 30),
        (1, "NVIDIA A100-SXM4-80GB", 69 << 30),
    ]
    assert [(g.job_id, g.inference) for g in reply] == [("", True), ("", False)]  # shared inference GPU: GPU 0
    slots.assign("sft-1", 1)  # the GPU that is not inference's goes first
    assert [(g.job_id, g.inference) for g in health.gpus(slots)] == [("", True), ("sft-1", False)]
    versions = health.library_versions()
    assert (versions["nvidia_driver"], versions["cuda_driver"]) == ("550.54.15", "12.4")

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(broken=True))  # no driver: a CPU worker, clearly
    assert devices.read_gpus() == [] and devices.plan(WorkerSettings()).capacity == 1
    assert "nvidia_driver" not in health.library_versions()


def test_health_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from vlmflow_worker import devices\n"
        "from vlmflow_worker.serve import health\n"
        "from vlmflow_worker.serve.settings import WorkerSettings\n"
        "health.gpus(devices.plan(WorkerSettings())); health.library_versions()\n"
        "assert 'torch' not in sys.modules, 'Health imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_job_gets_its_gpus_in_its_environment_and_frees_them_when_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real registry and a real child process (a prep job that fails at once), on one faked GPU that
    inference shares: the job is given it, inference is refused meanwhile, and both come back at the end."""
    from vlmflow_worker.jobs.registry import JobRegistry

    settings = WorkerSettings(host="127.0.0.1", port=0, artifact_root=tmp_path / "artifacts", data_roots=[tmp_path])
    settings.artifact_root.mkdir(parents=True)
    registry = JobRegistry(settings, capacity=1, slots=GpuSlots(fake_gpus(1)))
    assert registry._child_env(None)["CUDA_VISIBLE_DEVICES"] == ""  # the fork server sees no GPU; a job, its own
    request = jobs_pb2.PrepareDatasetRequest(
        job_id="prep", sources=[jobs_pb2.DatasetSource(uri=str(tmp_path / "missing.jsonl"))]
    )

    async def run() -> None:
        record, attached = await registry.start_or_attach("prep", jobs_pb2.JOB_KIND_PREPARE_DATASET, request)
        assert not attached
        meta = json.loads((record.folder / "job.json").read_text())
        assert (meta["gpus"], meta["cuda_visible_devices"]) == ([0], "GPU-0000-fake")
        if not record.done.is_set():
            with pytest.raises(WorkerBusy, match="lent to job 'prep'"):
                devices.inference_gate.check()
        await asyncio.wait_for(record.done.wait(), 120)
        assert registry.slots.release("prep") == []  # already freed by the registry
        devices.inference_gate.check()  # inference has its GPU back
        await registry.close()

    asyncio.run(run())
