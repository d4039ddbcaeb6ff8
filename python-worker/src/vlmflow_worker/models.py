"""Loading Idefics3 / SmolVLM models: a hub id or a local folder, one code path, plus a cache bounded by memory.

    from vlmflow_worker.models import load_model
    model, processor = load_model("HuggingFaceTB/SmolVLM-Instruct")          # or a local folder, or a ModelRef
    model, processor = load_model(ModelSpec(".state/models/tiny-idefics3", adapter="runs/x/adapter"))

- `AutoModelForImageTextToText` + `AutoProcessor`; dtype from `precision.py` (bf16 on CUDA with bf16, fp16 on older
  GPUs, fp32 on CPU, unless asked); SDPA attention.
- bitsandbytes 4-bit NF4 (double quantization, computing in the model's half type) or 8-bit on CUDA only: asked
  for on a machine without CUDA it fails with FailedPrecondition, never a silent fallback to full precision.
- A LoRA adapter (PEFT, safetensors only) on top of the base.
- `trust_remote_code` stays off unless the caller asks.
- Offline: a model that is neither a local folder nor in the local hub cache, with the hub unreachable, is
  NotFound("model not found locally and the hub is unreachable: ...") within seconds, instead of minutes of retries.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vlmflow_worker import devices, precision
from vlmflow_worker.errors import FailedPrecondition, InvalidArgument, NotFound, WorkerError
from vlmflow_worker.families import family_of_model
from vlmflow_worker.serve.settings import WorkerSettings

log = logging.getLogger("vlmflow.models")

QUANTIZATIONS = ("none", "nf4", "int8")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_QUANT_FROM_PROTO = {0: "none", 1: "none", 2: "nf4", 3: "int8"}
_DTYPE_FROM_PROTO = {0: "auto", 1: "float32", 2: "bfloat16", 3: "float16"}


def _from_proto_enum(table: dict[int, str], value: int, name: str) -> str:
    """An enum number this worker does not know (a newer client's value) is refused, never read as the default:
    a QLoRA request must not silently train unquantized."""
    if value not in table:
        known = ", ".join(f"{number} ({label})" for number, label in table.items() if number)
        raise InvalidArgument(f"{name} {value} is not a value this worker knows; use one of {known}")
    return table[value]


def quantization_from_proto(value: int) -> str:
    return _from_proto_enum(_QUANT_FROM_PROTO, value, "model.quantization")


def dtype_from_proto(value: int) -> str:
    return _from_proto_enum(_DTYPE_FROM_PROTO, value, "model.dtype")


@dataclass(frozen=True)
class ModelSpec:
    """What to load. Hashable: it is the model cache's key."""

    model_id: str = field(metadata={"help": "Hub id (org/name) or local model folder."})
    revision: str = field(default="", metadata={"help": "Hub branch, tag or commit; empty for the default branch."})
    quantization: str = field(default="none", metadata={"help": "none, nf4 (4-bit QLoRA style) or int8; CUDA only."})
    adapter: str = field(default="", metadata={"help": "LoRA adapter folder (safetensors) on top of the base."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub."})
    dtype: str = field(default="auto", metadata={"help": "auto (see precision.py), float32, bfloat16 or float16."})

    def __post_init__(self) -> None:
        if not self.model_id.strip():
            raise InvalidArgument("model.model_id is empty; give a hub id or a local model folder")
        if self.quantization not in QUANTIZATIONS:
            raise InvalidArgument(f"model.quantization {self.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
        if self.dtype not in DTYPES:
            raise InvalidArgument(f"model.dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @classmethod
    def from_proto(cls, ref: Any, settings: WorkerSettings | None = None) -> ModelSpec:
        """From a vlmflow.v1.ModelRef. The adapter URI is confined to the worker's roots when settings are given."""
        adapter = ref.adapter_uri
        if adapter and settings is not None:
            from vlmflow_worker.storage import resolve_uri

            adapter = str(resolve_uri(adapter, settings, what="model.adapter_uri"))
        return cls(
            model_id=resolve_model_id(ref.model_id, settings),
            revision=ref.revision,
            quantization=quantization_from_proto(ref.quantization),
            adapter=adapter,
            trust_remote_code=ref.trust_remote_code,
            dtype=dtype_from_proto(ref.dtype),
        )


def resolve_model_id(model_id: str, settings: WorkerSettings | None) -> str:
    """A relative folder under the artifact root (where merged and exported models go) wins over a hub id, as a
    local folder does in transformers; `file://` is stripped. Every way into load_model goes through here."""
    if model_id.startswith("file://"):
        model_id = model_id[len("file://") :]
    if settings is not None and model_id and not Path(model_id).is_absolute():
        candidate = settings.artifact_root / model_id
        if (candidate / "config.json").is_file():
            return str(candidate)
    return model_id


def as_spec(ref: ModelSpec | str | Path | Any, settings: WorkerSettings | None = None) -> ModelSpec:
    if isinstance(ref, ModelSpec):
        return dataclasses.replace(ref, model_id=resolve_model_id(ref.model_id, settings))
    if isinstance(ref, (str, Path)):
        return ModelSpec(model_id=resolve_model_id(str(ref), settings))
    return ModelSpec.from_proto(ref, settings)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _looks_local(model_id: str) -> bool:
    """A path rather than a hub id: absolute, ./ or ../, ~, more than one slash, or an existing folder."""
    if model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1 or os.path.exists(model_id):
        return True
    return False


def _torch_dtype(spec: ModelSpec, device: str):
    import torch

    return getattr(torch, precision.for_device(spec.dtype, device, spec.quantization).load_dtype)


def _quantization_config(spec: ModelSpec, device: str):
    """The bitsandbytes config, or None. Refuses (FailedPrecondition) where it cannot run."""
    if spec.quantization == "none":
        return None
    if not device.startswith("cuda"):
        raise FailedPrecondition(
            f"model.quantization {spec.quantization} needs a CUDA GPU (bitsandbytes) and this worker runs on {device}; "
            "load with quantization none here, or send the request to a GPU worker"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise FailedPrecondition(
            f"model.quantization {spec.quantization} needs bitsandbytes, which is not installed in this worker; "
            "install it with `pip install 'vlmflow-worker[cuda]'`"
        ) from err
    import torch
    from transformers import BitsAndBytesConfig

    if spec.quantization == "nf4":
        # The 4-bit layers compute in the dtype the rest of the model runs in (bf16, or fp16 on a T4 or V100).
        compute = precision.for_device(spec.dtype, device, spec.quantization).compute_dtype_4bit
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, compute or "float32"),
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _quantization_skip(source: str, common: dict[str, Any]) -> list[str] | None:
    """The modules the model's family keeps in full precision (families/: its vision tower and projector), or None
    for transformers' default (the output head). Read from config.json before loading, as bitsandbytes needs it
    then; a model of another family is refused here, with the list of supported ones."""
    hub = {key: value for key, value in common.items() if key != "trust_remote_code"}
    return list(family_of_model(source, **hub).quantization_skip) or None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint (HF_ENDPOINT); False in HF_HUB_OFFLINE mode."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def resolve_model_source(spec: ModelSpec) -> tuple[str, bool]:
    """Returns (what to pass to from_pretrained, local_files_only). Raises NotFound naming the model and the cause."""
    model_id = os.path.expanduser(spec.model_id)
    if _looks_local(model_id):
        path = Path(model_id).resolve()
        if not path.is_dir():
            raise NotFound(f"model folder {spec.model_id!r} does not exist")
        if not (path / "config.json").is_file():
            raise InvalidArgument(f"model folder {spec.model_id!r} is not a model: it has no config.json")
        return str(path), True
    # A hub id: use the local hub cache when it has the model, else the hub when it answers.
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=spec.revision or None)
    if isinstance(cached, str):
        return model_id, True
    if not _hub_reachable():
        raise NotFound(
            f"model not found locally and the hub is unreachable: {spec.model_id!r} is not a local folder and is not "
            "in the hub cache; download it where the hub is reachable (huggingface-cli download) or give a local folder"
        )
    return model_id, False


def _translate_load_error(spec: ModelSpec, err: Exception) -> WorkerError:
    text = str(err)
    if "is not a valid model identifier" in text or "Repository Not Found" in text or "404" in text:
        return NotFound(f"model {spec.model_id!r} is not a local folder and not a model on the hub", detail=text)
    if "revision" in text.lower() and spec.revision:
        return NotFound(f"model {spec.model_id!r} has no revision {spec.revision!r}", detail=text)
    if "trust_remote_code" in text:
        return InvalidArgument(
            f"model {spec.model_id!r} needs its own code from the hub; set model.trust_remote_code if you trust it",
            detail=text,
        )
    return NotFound(f"model {spec.model_id!r} could not be loaded: {text.splitlines()[0] if text else err!r}")


def _load_adapter(model, spec: ModelSpec):
    return attach_adapter(model, spec.adapter)


def attach_adapter(model, adapter_dir: str | Path, *, name: str = "default", trainable: bool = False, what: str = ""):
    """Loads a PEFT adapter onto `model` from safetensors only; every adapter load in the worker goes through here.

    A model that is already a PeftModel gets the adapter added under `name`; anything else is wrapped.
    Pickled weights (adapter_model.bin) are refused rather than left to peft's torch.load fallback.
    """
    what = what or "model.adapter_uri"
    adapter = Path(adapter_dir).expanduser()
    if not adapter.is_dir():
        raise NotFound(f"{what}: adapter folder {str(adapter_dir)!r} does not exist")
    if not (adapter / "adapter_config.json").is_file():
        raise InvalidArgument(f"{what}: {str(adapter_dir)!r} is not a PEFT adapter (no adapter_config.json)")
    if not (adapter / "adapter_model.safetensors").is_file():
        unsafe = [p.name for p in adapter.glob("adapter_model*.bin")]
        hint = (
            f" (found {', '.join(unsafe)}: pickled weights are refused, convert them to safetensors)" if unsafe else ""
        )
        raise InvalidArgument(f"{what}: {str(adapter_dir)!r} has no adapter_model.safetensors{hint}")
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter), adapter_name=name, is_trainable=trainable, use_safetensors=True)
        return model
    return PeftModel.from_pretrained(
        model, str(adapter), adapter_name=name, is_trainable=trainable, use_safetensors=True
    )


def load_model(
    ref: ModelSpec | str | Path | Any,
    *,
    settings: WorkerSettings | None = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Loads (model, processor) for a hub id, a local folder, a ModelSpec or a vlmflow.v1.ModelRef.

    The model is in eval mode on `device` (default: CUDA when present, else CPU). Raises NotFound, InvalidArgument
    or FailedPrecondition with a message that names the model and what to change.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    spec = as_spec(ref, settings)
    device = device or default_device()
    quantization_config = _quantization_config(spec, device)
    source, local_only = resolve_model_source(spec)
    common = {"revision": spec.revision or None, "trust_remote_code": spec.trust_remote_code}
    if local_only:
        common["local_files_only"] = True
    started = time.perf_counter()
    try:
        if quantization_config is not None:
            quantization_config.llm_int8_skip_modules = _quantization_skip(source, common)
        processor = AutoProcessor.from_pretrained(source, **common)
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=_torch_dtype(spec, device),
            attn_implementation="sdpa",
            quantization_config=quantization_config,
            device_map={"": device} if quantization_config is not None else None,
            **common,
        )
    except (OSError, ValueError) as err:
        raise _translate_load_error(spec, err) from err
    if quantization_config is None:
        model.to(device)
    if spec.adapter:
        model = _load_adapter(model, spec)
    model.eval()
    log.info(
        "model loaded",
        extra={
            "model": spec.model_id,
            "adapter": spec.adapter,
            "device": device,
            "seconds": time.perf_counter() - started,
        },
    )
    return model, processor


def weights_on_disk(spec: ModelSpec) -> int:
    """The weight files' bytes of a model folder (local, or the hub's cache when the model is there): what loading
    it will take, near enough for a cache to make room before the load (0 when unknown). Adapters are small."""
    folder = Path(spec.model_id)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(spec.model_id, revision=spec.revision or None, local_files_only=True)
            )  # no network: only what is cached
        except Exception:  # not cached (or not a hub id): the load will say why, if it fails
            return 0
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def memory_footprint(model) -> int:
    """Bytes held by the model's parameters and buffers."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any
    processor: Any
    device: str
    bytes: int
    load_seconds: float


def default_cache_bytes(device: str) -> int:
    """VLMFLOW_MODEL_CACHE_BYTES, else 80% of the GPU's memory on CUDA, else a quarter of the RAM on CPU."""
    if os.environ.get("VLMFLOW_MODEL_CACHE_BYTES"):
        return int(os.environ["VLMFLOW_MODEL_CACHE_BYTES"])
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * 0.8)
    import psutil

    return psutil.virtual_memory().total // 4


class ModelCache:
    """Loaded models kept in memory, least recently used evicted first when a new one would pass `max_bytes`.

    Keyed by the whole ModelSpec: (model, revision, quantization, adapter, trust_remote_code, dtype). The model in
    use is never evicted by its own load; a single model larger than the budget is still loaded (alone).
    """

    def __init__(self, max_bytes: int | None = None, device: str | None = None, settings: WorkerSettings | None = None):
        self.device = device or default_device()
        self.max_bytes = max_bytes if max_bytes is not None else default_cache_bytes(self.device)
        self.settings = settings
        self._entries: OrderedDict[ModelSpec, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        if self.device.startswith("cuda"):
            # In the server, a job may need this GPU (devices.py): the cache is emptied then, and loads refused.
            this = weakref.ref(self)  # the gate must not keep a dropped cache (and its models) alive

            def release() -> None:
                cache = this()
                if cache is not None:
                    cache.clear()

            devices.inference_gate.on_lend(release)

    def __contains__(self, spec: ModelSpec) -> bool:
        return spec in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self._entries.values())

    def get(self, ref: ModelSpec | str | Any) -> tuple[LoadedModel, bool]:
        """Returns (entry, loaded_now)."""
        spec = as_spec(ref, self.settings)
        with self._lock:
            self._check_device()
            if spec in self._entries:
                self._entries.move_to_end(spec)
                return self._entries[spec], False
            # Room first: on a GPU the old models and the new one would not fit side by side.
            self._evict_for(weights_on_disk(spec))
            started = time.perf_counter()
            model, processor = load_model(spec, settings=self.settings, device=self.device)
            entry = LoadedModel(
                spec, model, processor, self.device, memory_footprint(model), time.perf_counter() - started
            )
            self._evict_for(entry.bytes)
            self._entries[spec] = entry
            return entry, True

    def put(self, spec: ModelSpec, model, processor) -> LoadedModel:
        """Adds a model built in memory (the benchmark's random-weight SmolVLM) under `spec`."""
        with self._lock:
            self._check_device()
            entry = LoadedModel(spec, model, processor, self.device, memory_footprint(model), 0.0)
            self._evict_for(entry.bytes)
            self._entries[spec] = entry
            return entry

    def _evict_for(self, incoming: int) -> None:
        while self._entries and self.total_bytes + incoming > self.max_bytes:
            spec, old = self._entries.popitem(last=False)
            log.info("model evicted", extra={"model": spec.model_id, "adapter": spec.adapter, "bytes": old.bytes})
            del old
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _check_device(self) -> None:
        if self.device.startswith("cuda"):
            devices.inference_gate.check()  # WorkerBusy while a job has this (shared) GPU

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()  # hand the memory back to the driver, for the job that needs it
