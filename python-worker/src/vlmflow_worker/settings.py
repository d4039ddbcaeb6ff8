"""Worker settings: one typed place, filled from flags and VLMFLOW_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass
class WorkerSettings:
    host: str = field(
        default_factory=lambda: _env("VLMFLOW_WORKER_HOST", "127.0.0.1"),
        metadata={"help": "Address to bind. Loopback by default; set 0.0.0.0 only behind TLS and a token."},
    )
    port: int = field(
        default_factory=lambda: int(_env("VLMFLOW_WORKER_PORT", "50051")),
        metadata={"help": "Port to bind; 0 picks a free one (announced in the 'listening' log line)."},
    )
    artifact_root: Path = field(
        default_factory=lambda: Path(_env("VLMFLOW_ARTIFACT_ROOT", ".state/artifacts")),
        metadata={"help": "Folder holding datasets, checkpoints, adapters and reports, in run-scoped folders."},
    )
    data_roots: list[Path] = field(
        default_factory=lambda: [Path(p) for p in _env("VLMFLOW_DATA_ROOTS", "").split(os.pathsep) if p],
        metadata={"help": "Folders user datasets, images and videos may be read from (besides the artifact root)."},
    )
    job_capacity: int = field(
        default_factory=lambda: int(_env("VLMFLOW_JOB_CAPACITY", "0")),
        metadata={"help": "Jobs run at once; 0 means one per GPU, or one on CPU."},
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.job_capacity < 0:
            raise ValueError(f"job_capacity must be >= 0, got {self.job_capacity}")
        self.artifact_root = self.artifact_root.resolve()
        self.data_roots = [p.resolve() for p in self.data_roots]

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
