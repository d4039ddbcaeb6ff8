"""Worker settings: one typed place, filled from flags and VLMFLOW_* environment variables."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _number_env(name: str, default: str, kind: type[int] | type[float]) -> int | float:
    """A numeric variable; a value that is not a number is an error naming the variable, never a default."""
    value = _env(name, default)
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not {'an integer' if kind is int else 'a number'}") from None


def _optional_int_env(name: str) -> int | None:
    return int(_number_env(name, "", int)) if os.environ.get(name, "").strip() else None


def _path_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve to anything


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ValueError(f"token_file: cannot read {path}: {err.strerror}") from err
    if not token:
        raise ValueError(f"token_file: {path} is empty; write the shared token into it")
    return token


def parse_address(name: str, value: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9465` for IPv6) -> (host, port); raises ValueError naming the setting and the form."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or (":" in host and "[" not in value):
        raise ValueError(
            f"{name}: {value!r} is not host:port (e.g. 127.0.0.1:9465, 0.0.0.0:9465 or [::]:9465; port 0 picks a "
            "free one)"
        )
    return host, int(port)


def _validate_security(settings: WorkerSettings) -> None:
    """Checks the TLS/token settings and the bind address; raises ValueError naming the field and the fix.

    A worker other hosts can reach must not be open by accident: binding a non-loopback address needs TLS and a
    token, or an explicit `insecure` (what serving with them looks like is in `security.py`)."""
    if settings.token_file:
        from_file = read_token_file(settings.token_file)
        if settings.token and settings.token != from_file:
            raise ValueError("token: VLMFLOW_WORKER_TOKEN and the token file differ; set only one of them")
        settings.token = from_file
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("tls_cert and tls_key: TLS needs both the certificate and its private key")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ValueError("tls_client_ca: client certificates (mTLS) need server TLS too; set tls_cert and tls_key")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise ValueError(f"{name}: {path} is not a file")
    if is_loopback(settings.host) or settings.insecure:
        return
    missing = [what for what, ok in (("TLS", settings.tls_cert), ("a token", settings.token)) if not ok]
    if missing:
        raise ValueError(
            f"host: refusing to bind {settings.host} without {' and '.join(missing)}: other machines could run jobs "
            "on this worker. Set --tls-cert/--tls-key and VLMFLOW_WORKER_TOKEN (or --token-file), "
            "or pass --insecure (VLMFLOW_WORKER_INSECURE=1) on a network you trust."
        )


def check_gpu_settings(
    gpus: list[int], gpus_per_job: int, inference_gpu: int | None, job_capacity: int, capacity: int
) -> None:
    """Checks the device settings against the GPUs found (`gpus`: their indices) when the server starts; raises
    ValueError naming the setting and the fix. Settings alone are checked in WorkerSettings.__post_init__."""
    if inference_gpu is not None and inference_gpu not in gpus:
        found = f"GPUs {', '.join(map(str, gpus))}" if gpus else "no GPU (NVML found none)"
        raise ValueError(
            f"VLMFLOW_INFERENCE_GPU={inference_gpu}: this worker has {found}; name one of them or unset it"
        )
    if not gpus:
        return  # CPU: jobs run one per slot of job_capacity, nothing to divide
    job_gpus = len(gpus) - (inference_gpu is not None)
    if job_gpus < gpus_per_job:
        raise ValueError(
            f"VLMFLOW_GPUS_PER_JOB={gpus_per_job}: this worker has {job_gpus} GPU(s) for jobs"
            + (f" (GPU {inference_gpu} is inference's, VLMFLOW_INFERENCE_GPU)" if inference_gpu is not None else "")
            + "; lower it"
        )
    if job_capacity > capacity:
        raise ValueError(
            f"VLMFLOW_JOB_CAPACITY={job_capacity}: this worker has {capacity} job slot(s) ({job_gpus} GPU(s) for "
            f"jobs, {gpus_per_job} per job), and two jobs never share a GPU; lower it, or set 0 for one per slot"
        )


@dataclass
class WorkerSettings:
    host: str = field(
        default_factory=lambda: _env("VLMFLOW_WORKER_HOST", "127.0.0.1"),
        metadata={"help": "Address to bind. Loopback by default; set 0.0.0.0 only behind TLS and a token."},
    )
    port: int = field(
        default_factory=lambda: int(_number_env("VLMFLOW_WORKER_PORT", "50051", int)),
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
        default_factory=lambda: int(_number_env("VLMFLOW_JOB_CAPACITY", "0", int)),
        metadata={"help": "Jobs run at once; 0 means one per job slot (GPUs / gpus_per_job), or one on CPU."},
    )
    gpus_per_job: int = field(
        default_factory=lambda: int(_number_env("VLMFLOW_GPUS_PER_JOB", "1", int)),
        metadata={
            "help": "GPUs each job slot owns (its child sees only them, through CUDA_VISIBLE_DEVICES); capacity is "
            "the job GPUs / this. A training with training.num_processes > 1 takes one GPU per process."
        },
    )
    inference_gpu: int | None = field(
        default_factory=lambda: _optional_int_env("VLMFLOW_INFERENCE_GPU"),
        metadata={
            "help": "GPU index (as nvidia-smi numbers them) Generate's model cache owns, taken out of the job slots. "
            "Unset: inference shares the job GPU lent last, emptying its cache while a job holds it."
        },
    )
    job_stuck_after_s: float = field(
        default_factory=lambda: _number_env("VLMFLOW_JOB_STUCK_SECONDS", "1800", float),
        metadata={
            "help": "A job that sends no event (step, log line, checkpoint) for this many seconds is declared stuck: "
            "asked to checkpoint, killed after job_cancel_grace_s, and failed typed STUCK so a retry resumes it. "
            "0 turns the check off. Long silent phases (downloading a large model) need a larger value."
        },
    )
    job_lease_s: float = field(
        default_factory=lambda: _number_env("VLMFLOW_JOB_LEASE_SECONDS", "30", float),
        metadata={
            "help": "A job's owner renews its lease on the shared store every third of this; a worker on another "
            "host that sees a lease unchanged this long takes the job over (from its newest checkpoint)."
        },
    )
    job_cancel_grace_s: float = field(
        default_factory=lambda: _number_env("VLMFLOW_JOB_CANCEL_GRACE_SECONDS", "60", float),
        metadata={"help": "Seconds a job has to checkpoint and stop after a cancel before it is killed."},
    )
    generate_batch_tokens: int = field(
        default_factory=lambda: int(_number_env("VLMFLOW_GENERATE_BATCH_TOKENS", "16384", int)),
        metadata={
            "help": "Generate with batch_size 0: the most rows x (longest prompt + max_new_tokens) one generate() "
            "call holds, i.e. the KV cache it fills (16384 is ~3 GB for SmolVLM-Instruct in bf16, ~10 photos at full "
            "tiling). An explicit batch_size in the request is used as given."
        },
    )
    generate_batch_pixels: int = field(
        default_factory=lambda: int(_number_env("VLMFLOW_GENERATE_BATCH_PIXELS", str(32 * 2**20), int)),
        metadata={
            "help": "Generate with batch_size 0: the most image pixels (tiles x height x width, as encoded) one "
            "generate() call sends through the vision tower (the default is ~227 tiles of 384 px)."
        },
    )
    generate_batch_wait_ms: float = field(
        default_factory=lambda: _number_env("VLMFLOW_GENERATE_BATCH_WAIT_MS", "20", float),
        metadata={
            "help": "Generate: while concurrent requests are still being prepared (media read, prompts encoded), a "
            "generate() call waits for them to share it as long as they arrive less than this apart (10x this in all); "
            "a request alone, or a call the budget fills, starts at once. 0 never waits."
        },
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
    metrics_address: str | None = field(
        default_factory=lambda: _env("VLMFLOW_WORKER_METRICS_ADDRESS", "") or None,
        metadata={
            "help": "host:port of the Prometheus /metrics endpoint (jobs, training speed, Generate, GPU memory); unset "
            "serves none; port 0 picks a free one (in the 'listening' log line). It has no TLS or token: bind loopback "
            "or a network only your Prometheus reaches (compose: 0.0.0.0:9465 on its private network)."
        },
    )
    insecure: bool = field(
        default_factory=lambda: _env("VLMFLOW_WORKER_INSECURE", "").lower() in ("1", "true", "yes"),
        metadata={"help": "Allow binding a non-loopback host without TLS and a token (trusted networks only)."},
    )
    allow_user_rewards: bool = field(
        default_factory=lambda: _env("VLMFLOW_ALLOW_USER_REWARDS", "").lower() in ("1", "true", "yes"),
        metadata={
            "help": "Let GRPO requests name a reward function in a Python file under the data roots (kind 'custom'). "
            "It runs that file's code in the training process, as this worker's user: off unless set."
        },
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.job_capacity < 0:
            raise ValueError(f"job_capacity must be >= 0, got {self.job_capacity}")
        if self.gpus_per_job < 1:
            raise ValueError(f"gpus_per_job (VLMFLOW_GPUS_PER_JOB) must be >= 1, got {self.gpus_per_job}")
        if self.inference_gpu is not None and self.inference_gpu < 0:
            raise ValueError(
                f"inference_gpu (VLMFLOW_INFERENCE_GPU) must be a GPU index >= 0, got {self.inference_gpu}"
            )
        if self.job_stuck_after_s < 0:
            raise ValueError(f"job_stuck_after_s must be >= 0 (0 = never), got {self.job_stuck_after_s}")
        if self.job_lease_s <= 0:
            raise ValueError(f"job_lease_s must be > 0, got {self.job_lease_s}")
        if self.job_cancel_grace_s <= 0:
            raise ValueError(f"job_cancel_grace_s must be > 0, got {self.job_cancel_grace_s}")
        for name in ("generate_batch_tokens", "generate_batch_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.generate_batch_wait_ms < 0:
            raise ValueError(f"generate_batch_wait_ms must be >= 0 (0 = never wait), got {self.generate_batch_wait_ms}")
        if self.metrics_address is not None:
            parse_address("metrics_address (VLMFLOW_WORKER_METRICS_ADDRESS)", self.metrics_address)
        self.artifact_root = self.artifact_root.resolve()
        self.data_roots = [p.resolve() for p in self.data_roots]
        _validate_security(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
