"""What the worker can do: device, GPUs, library versions and job capacity (the Health RPC)."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

from vlmflow.v1 import worker_pb2

_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "av", "grpcio")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "vlmflow-worker": metadata.version("vlmflow-worker")}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # optional (bitsandbytes is CUDA-only)
    if torch.cuda.is_available() and torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions


def gpus() -> list[worker_pb2.GpuInfo]:
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        found.append(
            worker_pb2.GpuInfo(
                index=index,
                name=torch.cuda.get_device_name(index),
                total_memory_bytes=total,
                free_memory_bytes=free,
            )
        )
    return found


def default_capacity() -> int:
    """One job per GPU: two trainings never share a card. On CPU, one job at a time."""
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
