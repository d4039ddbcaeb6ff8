"""Worker settings: one typed place, filled from flags and VLMFLOW_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from vlmflow_worker import security


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _path_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


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
    tls_cert: Path | None = field(
        default_factory=lambda: _path_env("VLMFLOW_WORKER_TLS_CERT"),
        metadata={"help": "PEM certificate (chain) the worker serves TLS with; needs tls_key."},
    )
    tls_key: Path | None = field(
        default_factory=lambda: _path_env("VLMFLOW_WORKER_TLS_KEY"),
        metadata={"help": "PEM private key of tls_cert."},
    )
    tls_client_ca: Path | None = field(
        default_factory=lambda: _path_env("VLMFLOW_WORKER_TLS_CLIENT_CA"),
        metadata={"help": "PEM CA that client certificates must chain to; setting it turns on mutual TLS."},
    )
    token: str | None = field(
        default_factory=lambda: os.environ.get("VLMFLOW_WORKER_TOKEN") or None,
        repr=False,
        metadata={"help": "Shared token every call must carry (`authorization: Bearer <token>`); env only."},
    )
    token_file: Path | None = field(
        default_factory=lambda: _path_env("VLMFLOW_WORKER_TOKEN_FILE"),
        metadata={"help": "File holding the shared token (instead of VLMFLOW_WORKER_TOKEN)."},
    )
    insecure: bool = field(
        default_factory=lambda: _env("VLMFLOW_WORKER_INSECURE", "").lower() in ("1", "true", "yes"),
        metadata={"help": "Allow binding a non-loopback host without TLS and a token (trusted networks only)."},
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.job_capacity < 0:
            raise ValueError(f"job_capacity must be >= 0, got {self.job_capacity}")
        self.artifact_root = self.artifact_root.resolve()
        self.data_roots = [p.resolve() for p in self.data_roots]
        security.validate(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
