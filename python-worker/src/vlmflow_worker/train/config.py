"""SFTConfig: every knob of an SFT run, typed and documented, with defaults sane for SmolVLM-Instruct."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import InvalidArgument
from vlmflow_worker.families import LLAMA_PROJECTIONS
from vlmflow_worker.models import dtype_from_proto, quantization_from_proto
from vlmflow_worker.request_fields import set_fields
from vlmflow_worker.tracking.settings import TrackingSettings

# The default LoRA targets: every supported family's text tower has these projections (families/); the towers they
# are looked for in, and the vision tower's targets, are the family's.
TEXT_TARGETS = LLAMA_PROJECTIONS
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


@dataclass
class SFTConfig:
    model_id: str = field(default="HuggingFaceTB/SmolVLM-Instruct", metadata={"help": "Hub id or local folder."})
    revision: str = field(default="", metadata={"help": "Hub revision; empty for the default branch."})
    dataset_dir: str = field(default="", metadata={"help": "Prepared dataset folder (PrepareDataset's output)."})
    output_dir: str = field(default="", metadata={"help": "Folder for checkpoints/, adapter/ and logs."})
    quantization: str = field(
        default="none", metadata={"help": "'none', or 'nf4' for QLoRA (bitsandbytes 4-bit, CUDA only)."}
    )
    dtype: str = field(
        default="auto", metadata={"help": "'auto' (bf16 on CUDA, fp32 on CPU), 'float32', 'bfloat16', 'float16'."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(
        default_factory=lambda: list(TEXT_TARGETS),
        metadata={"help": "Projection names to adapt in the text model (and the vision tower with tune_vision)."},
    )
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    tune_vision: bool = field(default=False, metadata={"help": "Also adapt the vision tower's projections."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the train split (max_steps overrides)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps; 0 means use num_epochs."})
    micro_batch_size: int = field(default=4, metadata={"help": "Rows per device per forward pass."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimizer step."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Share of steps with linear warmup."})
    lr_scheduler: str = field(default="cosine", metadata={"help": f"One of {', '.join(SCHEDULERS)}."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    seed: int = field(default=42, metadata={"help": "Seed of LoRA init, data order and dropout."})
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations (non-reentrant) to save memory."}
    )
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N optimizer steps."})
    eval_steps: int = field(default=100, metadata={"help": "Evaluate on the eval split every N steps (0: never)."})
    logging_steps: int = field(default=10, metadata={"help": "Progress event every N steps."})
    max_length: int = field(
        default=2048, metadata={"help": "Longest row in tokens; longer rows fail the run (prep drops them)."}
    )
    save_total_limit: int = field(
        default=3,
        metadata={
            "help": "Checkpoints kept (0 keeps all); 1 is safe: old ones go only after the new one is renamed in."
        },
    )
    num_processes: int = field(default=1, metadata={"help": "Processes of a torchrun launch (1: no launcher)."})
    packing: bool = field(
        default=False,
        metadata={"help": "Padding-free micro-batches: rows back to back with per-row position_ids (collator.py)."},
    )
    tracking: TrackingSettings = field(
        default_factory=TrackingSettings,
        metadata={"help": "Experiment tracking (tracking/): TensorBoard always, MLflow and W&B when set."},
    )

    def __post_init__(self) -> None:
        checks = [
            (self.quantization in ("none", "nf4", "int8"), "quantization must be 'none', 'nf4' or 'int8'"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype must be auto/float32/bfloat16/float16"),
            (self.lora_r > 0, "lora.r must be > 0"),
            (self.lora_alpha > 0, "lora.alpha must be > 0"),
            (0 <= self.lora_dropout < 1, "lora.dropout must be in [0, 1)"),
            (bool(self.target_modules), "lora.target_modules must not be empty"),
            (self.learning_rate > 0, "training.learning_rate must be > 0"),
            (self.num_epochs > 0 or self.max_steps > 0, "training.num_epochs or training.max_steps must be > 0"),
            (self.max_steps >= 0, "training.max_steps must be >= 0"),
            (self.micro_batch_size > 0, "training.micro_batch_size must be > 0"),
            (self.gradient_accumulation_steps > 0, "training.gradient_accumulation_steps must be > 0"),
            (0 <= self.warmup_ratio < 1, "training.warmup_ratio must be in [0, 1)"),
            (self.lr_scheduler in SCHEDULERS, f"training.lr_scheduler must be one of {', '.join(SCHEDULERS)}"),
            (self.weight_decay >= 0, "training.weight_decay must be >= 0"),
            (self.max_grad_norm >= 0, "training.max_grad_norm must be >= 0"),
            (self.save_steps > 0, "training.save_steps must be > 0"),
            (self.eval_steps >= 0, "training.eval_steps must be >= 0"),
            (self.logging_steps > 0, "training.logging_steps must be > 0"),
            (self.max_length >= 16, "training.max_length must be >= 16"),
            (self.save_total_limit >= 0, "training.save_total_limit must be >= 0"),
            (1 <= self.num_processes <= 64, "training.num_processes must be between 1 and 64"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgument(message)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}

    @classmethod
    def from_request(cls, request: jobs_pb2.TrainRequest, dataset_dir: str, output_dir: str) -> SFTConfig:
        """Fields the request sets are used as sent, zeros included (dropout 0, warmup 0, eval_steps 0 = never,
        save_total_limit 0 = keep all); fields it leaves unset take this class's defaults."""
        lora, training = request.lora, request.training
        values: dict[str, Any] = {
            "model_id": request.model.model_id,
            "revision": request.model.revision,
            "dataset_dir": dataset_dir,
            "output_dir": output_dir,
            "quantization": quantization_from_proto(request.model.quantization),
            "dtype": dtype_from_proto(request.model.dtype),
            "use_dora": lora.use_dora,
            "tune_vision": lora.tune_vision,
            "tracking": TrackingSettings.from_proto(request.tracking),
        }
        values |= set_fields(lora, {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"})
        values |= set_fields(training, {name: name for name in TRAINING_FIELDS})
        values |= set_fields(training, {"num_epochs": "num_epochs", "lr_scheduler": "lr_scheduler"})
        if lora.target_modules:
            values["target_modules"] = list(lora.target_modules)
        return cls(**values)


# TrainingConfig fields with explicit presence whose names match SFTConfig's.
TRAINING_FIELDS = (
    "learning_rate", "max_steps", "micro_batch_size", "gradient_accumulation_steps", "warmup_ratio", "weight_decay",
    "max_grad_norm", "seed", "gradient_checkpointing", "save_steps", "eval_steps", "logging_steps", "max_length",
    "save_total_limit", "num_processes", "packing",
)  # fmt: skip
