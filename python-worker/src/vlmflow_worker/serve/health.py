"""What the worker can do: device, GPUs, library versions (the Health RPC).

GPUs are read through NVML (devices.py), never torch.cuda: Health runs every few seconds, and torch.cuda would create
a CUDA context on every GPU of the server process, memory the jobs that own those GPUs then lack. This module does
not import torch at all (tests/test_devices.py checks it).
"""

from __future__ import annotations

import platform
from importlib import metadata

from vlmflow.v1 import worker_pb2
from vlmflow_worker import devices

_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "av", "grpcio")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "vlmflow-worker": metadata.version("vlmflow-worker")}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # optional (bitsandbytes is CUDA-only)
    return versions | devices.driver_versions()


def gpus(slots: devices.GpuSlots) -> list[worker_pb2.GpuInfo]:
    """The worker's GPUs (inference's included) with their memory now, read through NVML."""
    mine = {g.uuid: g for g in slots.gpus}
    inference = slots.inference
    return [
        worker_pb2.GpuInfo(
            index=gpu.index,
            name=gpu.name,
            total_memory_bytes=gpu.total_memory_bytes,
            free_memory_bytes=gpu.free_memory_bytes,
            job_id=slots.holder(mine[gpu.uuid]) or "",
            inference=inference is not None and gpu.uuid == inference.uuid,
        )
        for gpu in devices.read_gpus()
        if gpu.uuid in mine
    ]
