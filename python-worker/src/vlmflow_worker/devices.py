"""Which GPUs this worker has (read through NVML), which job owns which, and the GPU inference uses.

    slots = plan(settings)                     # reads NVML once, at server start
    gpus = slots.assign("job-1", 2)            # the job's child gets CUDA_VISIBLE_DEVICES=<their UUIDs>
    slots.release("job-1")                     # when the job process has ended

- GPUs are read through NVML (nvidia-ml-py), never through torch.cuda: NVML creates no CUDA context, so Health and
  the server's start leave every GPU's memory to the jobs. Without NVML (no driver, a CPU machine) the worker has
  no GPUs and says why once in its log.
- Each job slot owns its GPUs: capacity is the job GPUs / VLMFLOW_GPUS_PER_JOB; a multi-GPU training
  (training.num_processes > 1) takes as many GPUs as processes, so it fills several slots.
- Inference (the server's model cache, used by Generate) runs on one GPU. VLMFLOW_INFERENCE_GPU gives it its own,
  taken out of the job slots, so serving never waits for training. Unset, inference shares a job GPU (the one jobs
  get last), and that GPU is lent to a job only when no other is free: the model cache is then emptied before the
  job starts and Generate is refused (UNAVAILABLE, naming the job) until it ends. Sharing is the default because a
  one-GPU host would otherwise have no job slot at all; refusing beats two processes fighting over one card's memory.
- GPUs are named to the child by UUID, which means the same card whatever CUDA's device order is.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vlmflow_worker.errors import FailedPrecondition, WorkerBusy
from vlmflow_worker.serve.settings import WorkerSettings, check_gpu_settings

log = logging.getLogger("vlmflow.devices")


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's index: PCI bus order, as nvidia-smi shows
    uuid: str  # what CUDA_VISIBLE_DEVICES names the card by
    name: str
    total_memory_bytes: int = 0
    free_memory_bytes: int = 0
    compute_capability: tuple[int, int] = (0, 0)


_warned: set[str] = set()


def read_gpus() -> list[Gpu]:
    """Every GPU NVML sees, with its memory now; [] when NVML is missing or fails (logged once, with why)."""
    try:
        import pynvml
    except ImportError:
        _no_gpus("nvidia-ml-py (pynvml) is not installed")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        _no_gpus(f"NVML did not start ({err}): no NVIDIA driver here")
        return []
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(
                Gpu(
                    index=index,
                    uuid=pynvml.nvmlDeviceGetUUID(handle),
                    name=pynvml.nvmlDeviceGetName(handle),
                    total_memory_bytes=int(memory.total),
                    free_memory_bytes=int(memory.free),
                    compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),
                )
            )
        return found
    except pynvml.NVMLError as err:
        _no_gpus(f"NVML failed reading the GPUs ({err})")
        return []
    finally:
        pynvml.nvmlShutdown()


def driver_versions() -> dict[str, str]:
    """The NVIDIA driver and the CUDA version it supports, through NVML; {} without NVML."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # 12040 means 12.4
        return {
            "nvidia_driver": pynvml.nvmlSystemGetDriverVersion(),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        }
    except pynvml.NVMLError:
        return {}
    finally:
        pynvml.nvmlShutdown()


def _no_gpus(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        log.info("no GPUs: jobs and inference run on CPU", extra={"why": why})


def visible(gpus: list[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs an operator left this worker with CUDA_VISIBLE_DEVICES (indices in nvidia-smi's order, or UUIDs)."""
    if cuda_visible_devices is None:
        return gpus
    kept = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if not entry:
            continue
        match = [g for g in gpus if (entry.isdigit() and g.index == int(entry)) or g.uuid.startswith(entry)]
        if not match:
            break  # CUDA stops at the first entry it cannot match, too
        kept.append(match[0])
    return kept


class InferenceGate:
    """The shared inference GPU lent to a job: the model caches on it are emptied, and loads refused until it is back.

    One per process (the server's model cache is built by the Generate code, which registers itself here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lent_to: str | None = None
        self._gpu: int | None = None
        self._releases: list[Callable[[], None]] = []

    def on_lend(self, release: Callable[[], None]) -> None:
        """`release` empties a model cache on the inference device; called when the device is lent to a job."""
        with self._lock:
            self._releases.append(release)

    def lend(self, job_id: str, gpu: int) -> None:
        with self._lock:
            self._lent_to, self._gpu, releases = job_id, gpu, list(self._releases)
        for release in releases:
            release()
        log.info("inference GPU lent to a job; model cache emptied", extra={"job_id": job_id, "gpu": gpu})

    def take_back(self, job_id: str) -> None:
        with self._lock:
            if self._lent_to != job_id:
                return
            self._lent_to = None
        log.info("inference GPU back from a job", extra={"job_id": job_id, "gpu": self._gpu})

    def check(self) -> None:
        """Raises WorkerBusy while a job has the inference GPU."""
        lent_to = self._lent_to
        if lent_to is not None:
            raise WorkerBusy(
                f"the inference GPU {self._gpu} is lent to job {lent_to!r}, which needed it: Generate runs again "
                "when that job ends. Set VLMFLOW_INFERENCE_GPU to give inference a GPU of its own"
            )


inference_gate = InferenceGate()


@dataclass
class GpuSlots:
    """Which job holds which GPUs. Pure bookkeeping over a given GPU list, so tests pass a fake one."""

    gpus: list[Gpu]  # every GPU this worker may use, inference's included
    gpus_per_job: int = 1
    inference_gpu: int | None = None  # an index in `gpus` inference owns (excluded from jobs), or None: shared
    job_capacity: int = 0  # at most this many jobs at once; 0: as many as the GPUs allow (1 on CPU)
    _held: dict[str, list[Gpu]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_gpu_settings(
            [g.index for g in self.gpus], self.gpus_per_job, self.inference_gpu, self.job_capacity, self.capacity
        )

    @property
    def job_gpus(self) -> list[Gpu]:
        return [g for g in self.gpus if g.index != self.inference_gpu]

    @property
    def capacity(self) -> int:
        if not self.gpus:
            return self.job_capacity or 1
        slots = len(self.job_gpus) // self.gpus_per_job
        return min(self.job_capacity, slots) if self.job_capacity else slots

    @property
    def inference(self) -> Gpu | None:
        """The GPU the server's model cache uses: its own, or the job GPU lent to jobs last."""
        if not self.gpus:
            return None
        if self.inference_gpu is not None:
            return next(g for g in self.gpus if g.index == self.inference_gpu)
        return self.job_gpus[0]

    @property
    def inference_shared(self) -> bool:
        return bool(self.gpus) and self.inference_gpu is None

    def wanted(self, num_processes: int) -> int:
        """GPUs a job gets: its slot's, or one per process for a multi-GPU training; none on CPU."""
        return max(self.gpus_per_job, num_processes) if self.gpus else 0

    def assign(self, job_id: str, count: int) -> list[Gpu]:
        """Gives `job_id` `count` free GPUs (the shared inference GPU last); raises WorkerBusy when they are taken,
        FailedPrecondition when this worker could never give that many."""
        if count > len(self.job_gpus):
            raise FailedPrecondition(
                f"the job needs {count} GPUs (training.num_processes, or VLMFLOW_GPUS_PER_JOB) and this worker has "
                f"{len(self.job_gpus)} for jobs; lower training.num_processes or send the job to a larger worker"
            )
        taken = {g.index for gpus in self._held.values() for g in gpus}
        free = [g for g in self.job_gpus if g.index not in taken]
        if self.inference_shared:
            free.sort(key=lambda g: g == self.inference)  # inference's GPU last: lent only when no other is free
        if len(self._held) >= self.capacity or len(free) < count:
            busy = ", ".join(job + (f" (GPUs {_indices(gpus)})" if gpus else "") for job, gpus in self._held.items())
            where = f" on {len(self.job_gpus)} GPU(s)" if self.gpus else ""
            raise WorkerBusy(
                f"this worker runs {self.capacity} job(s) at once{where} and is busy with: {busy}; retry when one has "
                "finished (Health reports job_capacity and jobs_running)"
            )
        self._held[job_id] = free[:count]
        return self._held[job_id]

    def release(self, job_id: str) -> list[Gpu]:
        return self._held.pop(job_id, [])

    def holder(self, gpu: Gpu) -> str | None:
        return next((job for job, gpus in self._held.items() if gpu in gpus), None)

    def lends_inference(self, gpus: list[Gpu]) -> bool:
        """True when these (a job's) GPUs include the GPU inference shares."""
        inference = self.inference
        return self.inference_shared and inference is not None and inference in gpus


def _indices(gpus: list[Gpu]) -> str:
    return ",".join(str(g.index) for g in gpus)


def cuda_visible_devices(gpus: list[Gpu]) -> str:
    return ",".join(g.uuid for g in gpus)


# What the operator started the worker with, before use_for_inference narrows the server process to one GPU.
_OPERATOR_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")


def plan(settings: WorkerSettings) -> GpuSlots:
    """The worker's GPUs (NVML, narrowed by the CUDA_VISIBLE_DEVICES it was started with) and their slots."""
    gpus = visible(read_gpus(), _OPERATOR_VISIBLE)
    return GpuSlots(gpus, settings.gpus_per_job, settings.inference_gpu, settings.job_capacity)


def use_for_inference(slots: GpuSlots) -> None:
    """Lets this (the server) process see only the inference GPU, so its model cache's "cuda" is that card and no
    CUDA context lands on a job's GPU. Must run before anything in the process initialises CUDA: the server imports
    torch lazily, and nothing before the first Generate touches CUDA. Job processes get their own value."""
    inference = slots.inference
    if inference is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = inference.uuid
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log.warning("CUDA was initialised before the inference GPU was chosen; inference may use another GPU")
