"""DPO of an Idefics3 / SmolVLM model on preference rows (prompt, chosen, rejected, images), with TRL's DPOTrainer.

Reads top to bottom like SFT (`train/sft.py`), whose plumbing it reuses: job events, atomic checkpoints, resume,
cancel, OOM figures. 1. data, 2. model and adapter, 3. trainer, 4. train (resuming), 5. save the adapter.

The reference model is never a second copy of the weights:
- from the base: a new LoRA/DoRA adapter is trained and the reference is the same model with the adapter disabled;
- from an SFT adapter (`model.adapter_uri`): that adapter keeps training and TRL keeps a frozen copy of the
  adapter (adapter-sized, not model-sized) as the reference, so the reference is the SFT model, as DPO intends.
The saved adapter applies to the plain base in both cases, so Evaluate and Export treat it like an SFT adapter.

Progress events carry rewards/chosen, rewards/rejected, rewards/accuracies and rewards/margins in `metrics`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmflow.v1 import jobs_pb2
from vlmflow_worker import faults
from vlmflow_worker.errors import BadData, FailedPrecondition, InvalidArgument, NotFound
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.spec import JobResult, JobSpec
from vlmflow_worker.precision import Precision, for_device
from vlmflow_worker.request_fields import set_fields
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri
from vlmflow_worker.train.checkpoints import AtomicCheckpointTrainer
from vlmflow_worker.train.config import SFTConfig
from vlmflow_worker.train.job import launch, resume_point  # the same checkpoints layout and launch as SFT

# TRL 1.16's DPO losses (DPOConfig.loss_type); several can be combined, e.g. "sigmoid,sft" (RPO-style).
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
PROGRESS_FIGURES = ("rewards/", "logps/", "logits/")


@dataclass
class DPOTrainConfig(SFTConfig):
    """Every knob of a DPO run: the SFT ones (LoRA/DoRA/QLoRA, schedule, checkpoints) plus DPO's own."""

    learning_rate: float = field(
        default=5e-5, metadata={"help": "Peak learning rate (LoRA DPO; full-model DPO recipes use ~10x less)."}
    )
    adapter_dir: str = field(
        default="", metadata={"help": "SFT adapter to continue from (its frozen copy is the reference); empty: base."}
    )
    beta: float = field(default=0.1, metadata={"help": "Strength of the pull towards the reference (IPO: tau)."})
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"], metadata={"help": f"One or more of {', '.join(LOSS_TYPES)}."}
    )
    max_prompt_length: int = field(
        default=0, metadata={"help": "Longest prompt in tokens, image tokens included; 0: only max_length applies."}
    )
    max_completion_length: int = field(default=0, metadata={"help": "Longest answer in tokens; 0: no own limit."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise InvalidArgument(f"dpo.beta must be > 0, got {self.beta}")
        unknown = [t for t in self.loss_type if t not in LOSS_TYPES]
        if not self.loss_type or unknown:
            raise InvalidArgument(f"dpo.loss_type {','.join(self.loss_type)!r}: choose from {', '.join(LOSS_TYPES)}")
        if self.max_prompt_length < 0 or self.max_completion_length < 0:
            raise InvalidArgument("dpo.max_prompt_length and dpo.max_completion_length must be >= 0")

    @classmethod
    def from_request(
        cls, request: jobs_pb2.TrainRequest, dataset_dir: str, output_dir: str, adapter_dir: str = ""
    ) -> DPOTrainConfig:
        base = SFTConfig.from_request(request, dataset_dir, output_dir)
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(SFTConfig)}
        if not request.training.HasField("learning_rate"):
            values.pop("learning_rate")  # DPO's own default, not SFT's
        extra: dict[str, Any] = {"adapter_dir": adapter_dir}
        extra |= set_fields(request.dpo, {n: n for n in ("beta", "max_prompt_length", "max_completion_length")})
        if request.dpo.loss_type:
            extra["loss_type"] = [t.strip() for t in request.dpo.loss_type.split(",") if t.strip()]
        return cls(**values, **extra)


# ---------------------------------------------------------------------------------------------------------------
# 1. Data


def read_preference_split(dataset_dir: Path, split: str) -> list[dict[str, Any]]:
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    if meta["kind"] != "preference":
        raise BadData(f"dataset_uri {dataset_dir} holds {meta['kind']} rows; DPO needs preference rows")
    path = dataset_dir / meta[split]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class PreferenceCollator:
    """TRL's vision preference collator on fresh copies of our rows (it fills prompts with images in place), with
    images opened from the dataset folder, tokens counted for tokens/s, and lengths checked: a row whose prompt
    (images included) or answer is over its limit fails the run, it is never cut."""

    def __init__(self, processor, dataset_dir: Path, config: DPOTrainConfig) -> None:
        from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

        self.inner = DataCollatorForVisionPreference(processor, max_length=None)
        self.dataset_dir = dataset_dir
        self.config = config
        self.tokens_seen = 0

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [json.loads(item["row"]) for item in items]
        examples = [
            {
                "prompt": copy.deepcopy(row["prompt"]),
                "chosen": copy.deepcopy(row["chosen"]),
                "rejected": copy.deepcopy(row["rejected"]),
                "images": [Image.open(self.dataset_dir / p).convert("RGB") for p in row.get("images", [])],
            }
            for row in rows
        ]
        batch = self.inner(examples)
        lengths = batch["attention_mask"].sum(dim=1)
        answers = batch["completion_mask"].sum(dim=1)
        prompts = lengths - answers
        self._check(rows, lengths, "tokens (images included)", self.config.max_length, "training.max_length")
        self._check(
            rows, prompts, "prompt tokens (images included)", self.config.max_prompt_length, "dpo.max_prompt_length"
        )
        self._check(rows, answers, "answer tokens", self.config.max_completion_length, "dpo.max_completion_length")
        self.tokens_seen += int(lengths.sum())
        return batch

    @staticmethod
    def _check(rows, values: torch.Tensor, what: str, limit: int, name: str) -> None:
        if not limit or int(values.max()) <= limit:
            return
        worst = int(values.argmax()) % len(rows)  # the batch is [chosen rows, rejected rows]
        raise BadData(
            f"row {rows[worst].get('id', worst)} has {int(values.max())} {what}, over {name} {limit}; prepare the "
            "dataset with a max_length that drops such rows (they are never cut)"
        )


def as_dataset(rows: list[dict[str, Any]]):
    """A `datasets.Dataset` as TRL requires, holding each row as JSON: Arrow would otherwise merge the content parts
    of all rows into one struct type (adding `"text": None` to image parts). The `images` column tells TRL the data
    is multimodal; the collator opens the files."""
    from datasets import Dataset

    return Dataset.from_dict({"images": [r.get("images", []) for r in rows], "row": [json.dumps(r) for r in rows]})


# ---------------------------------------------------------------------------------------------------------------
# 2. Model and adapter


def load_policy(config: DPOTrainConfig, settings: WorkerSettings | None):  # GRPOTrainConfig too (adapter_dir)
    """(model, processor, peft_config): a PeftModel continuing the SFT adapter (peft_config None), or the plain
    model and the LoraConfig TRL wraps it with (reference = adapter disabled)."""
    from peft import LoraConfig, prepare_model_for_kbit_training

    from vlmflow_worker.models import ModelSpec, attach_adapter, load_model
    from vlmflow_worker.train.sft import device_for_rank, lora_targets, no_kv_cache

    spec = ModelSpec(config.model_id, config.revision, config.quantization, dtype=config.dtype)
    model, processor = load_model(spec, settings=settings, device=device_for_rank())
    no_kv_cache(model)
    if config.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    torch.manual_seed(config.seed)
    if config.adapter_dir:
        model = attach_adapter(model, config.adapter_dir, trainable=True, what="model.adapter_uri (the SFT adapter)")
        return model, processor, None
    # The same LoRA/DoRA layout SFT uses, applied by TRL so that it knows the adapter is new.
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_targets(config, model),
        use_dora=config.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return model, processor, peft_config


# ---------------------------------------------------------------------------------------------------------------
# 3. Trainer


def dpo_arguments(config: DPOTrainConfig, output_dir: Path, has_eval: bool, precision: Precision):
    """TRL's DPOConfig with the very TrainingArguments SFT uses, plus DPO's own fields."""
    from trl import DPOConfig

    from vlmflow_worker.train.sft import training_arguments

    base = training_arguments(config, output_dir, has_eval, precision)
    accepted = {f.name for f in dataclasses.fields(DPOConfig) if f.init}
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init and f.name in accepted}
    return DPOConfig(
        **{**values, "bf16": precision.bf16, "fp16": precision.fp16},
        beta=config.beta,
        loss_type=list(config.loss_type),
        max_length=None,  # checked by PreferenceCollator instead: TRL would cut silently
        precompute_ref_log_probs=False,
        disable_dropout=True,
    )


def make_trainer(config: DPOTrainConfig, model, processor, peft_config, args, train_rows, eval_rows, collator, events):
    from trl import DPOTrainer

    class AtomicDPOTrainer(AtomicCheckpointTrainer, DPOTrainer):
        """DPOTrainer whose checkpoints appear by rename and are announced as job events."""

    return AtomicDPOTrainer(
        model=model,
        args=args,
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(eval_rows) if eval_rows else None,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
        callbacks=[events, *faults.armed_callbacks(config.micro_batch_size)],  # test hooks, inert unless set
    )


class _FiguresInProgress:
    """A JobContext whose progress events carry the latest trainer figures (DPO: rewards, log-probs; GRPO: rewards,
    KL, completion lengths) in `metrics`."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self.figures: dict[str, float] = {}

    def progress(self, phase: str, metrics: dict[str, float] | None = None, **fields) -> None:
        self._ctx.progress(phase, metrics={**self.figures, **(metrics or {})}, **fields)

    def __getattr__(self, name: str):
        return getattr(self._ctx, name)


def job_events(ctx: JobContext | None, seen, config: SFTConfig, log: Path, figures: tuple[str, ...] = PROGRESS_FIGURES):
    """SFT's JobEvents whose progress events also carry the trainer's logged figures named by `figures` (prefixes);
    `seen` counts tokens for tokens/s (DPO: its collator)."""
    from vlmflow_worker.train.sft import JobEvents

    proxy = _FiguresInProgress(ctx) if ctx is not None else None

    class FigureJobEvents(JobEvents):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if proxy is not None and logs:
                proxy.figures = {
                    k: float(v) for k, v in logs.items() if k.startswith(figures) and isinstance(v, int | float)
                }
            super().on_log(args, state, control, logs=logs, **kwargs)

    return FigureJobEvents(proxy, seen, config, log)


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Train and save


def train_dpo(
    config: DPOTrainConfig, ctx: JobContext | None = None, settings: WorkerSettings | None = None
) -> JobResult:
    from vlmflow_worker.train.sft import device_for_rank, train_resuming

    output = Path(config.output_dir)
    checkpoints = output / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)

    # 1. Data.
    dataset_dir = Path(config.dataset_dir)
    train_rows = read_preference_split(dataset_dir, "train")
    eval_rows = read_preference_split(dataset_dir, "eval")
    if not train_rows:
        raise BadData(f"dataset_uri {dataset_dir} has no train rows")
    has_eval = bool(eval_rows) and config.eval_steps > 0

    # 2. Model and adapter; 3. trainer.
    # Refused here (model.dtype the GPU cannot train in) before seconds of loading; the load picks the same dtype.
    precision = for_device(config.dtype, device_for_rank(), config.quantization, training=True)
    model, processor, peft_config = load_policy(config, settings)
    collator = PreferenceCollator(processor, dataset_dir, config)
    args = dpo_arguments(config, checkpoints, has_eval, precision)
    events = job_events(ctx, collator, config, output / "training_log.jsonl")
    trainer = make_trainer(
        config, model, processor, peft_config, args, train_rows, eval_rows if has_eval else None, collator, events
    )
    trainer.job = ctx

    # 4. Train, resuming from the newest complete checkpoint on disk (typed OOM / STORAGE / cancel, as SFT).
    result = train_resuming(trainer, config, ctx, events, output, checkpoints)

    # 5. The policy adapter only (not TRL's frozen "ref" copy), the processor and the settings, renamed into place.
    return save_policy(trainer, result, has_eval, processor, config, output, checkpoints)


def save_policy(trainer, result, has_eval: bool, processor, config, output: Path, checkpoints: Path) -> JobResult:
    """The final metrics (a last eval when there is an eval split) and the policy adapter alone, as SFT saves its
    adapter: TRL's frozen "ref" copy (DPO or GRPO continuing an SFT adapter) stays out."""
    from vlmflow_worker.train.sft import save_adapter

    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    metrics["global_step"] = float(trainer.state.global_step)
    if has_eval:
        metrics |= {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, int | float)}
    return save_adapter(trainer, processor, config, output, checkpoints, metrics, selected_adapters=["default"])


# ---------------------------------------------------------------------------------------------------------------
# The job (Train with kind DPO)


def request_paths(request: jobs_pb2.TrainRequest, settings: WorkerSettings, rows: str) -> tuple[str, str, str]:
    """(dataset, output, adapter) folders of a DPO or GRPO request, inside the worker's roots; `rows` names the
    dataset it needs ("preference", "conversation")."""
    if not request.dataset_uri:
        raise InvalidArgument(f"dataset_uri is empty: pass the {rows} dataset folder PrepareDataset returned")
    if not request.output_uri:
        raise InvalidArgument("output_uri is empty: pass a run-scoped folder for checkpoints and the adapter")
    if not request.model.model_id:
        raise InvalidArgument("model.model_id is empty; give a hub id or a local model folder")
    dataset = resolve_uri(request.dataset_uri, settings, "dataset_uri")
    output = resolve_uri(request.output_uri, settings, "output_uri")
    adapter = ""
    if request.model.adapter_uri:
        adapter = str(resolve_uri(request.model.adapter_uri, settings, "model.adapter_uri"))
    return str(dataset), str(output), adapter


def config_of(request: jobs_pb2.TrainRequest, settings: WorkerSettings) -> DPOTrainConfig:
    return DPOTrainConfig.from_request(request, *request_paths(request, settings, "preference"))


def checked_inputs(request: jobs_pb2.TrainRequest, config, kind: str, needs: str) -> dict[str, Any]:
    """The prepared dataset's dataset.json, after checking that it holds `kind` rows and that the adapter to continue
    (if any) is an adapter folder; `needs` says what the job needs, for the refusal (DPO and GRPO)."""
    meta_path = Path(config.dataset_dir) / "dataset.json"
    if not meta_path.is_file():
        raise NotFound(f"dataset_uri {request.dataset_uri!r} is not a prepared dataset (no dataset.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != kind:
        raise InvalidArgument(f"dataset_uri {request.dataset_uri!r} holds {meta.get('kind')} rows; {needs}")
    if config.adapter_dir and not (Path(config.adapter_dir) / "adapter_config.json").is_file():
        raise NotFound(f"model.adapter_uri {request.model.adapter_uri!r} is not an adapter folder")
    return meta


def validate(request: jobs_pb2.TrainRequest, settings: WorkerSettings) -> None:
    config = config_of(request, settings)
    meta = checked_inputs(request, config, "preference", "DPO needs preference rows (prompt, chosen, rejected, images)")
    # Prep counted every row's longest sequence (prompt + the longer answer, image tokens included).
    longest = max((json.loads(line).get("num_tokens", 0) for line in _lines(Path(config.dataset_dir), meta)), default=0)
    if longest > config.max_length:
        raise InvalidArgument(
            f"training.max_length {config.max_length} is below the dataset's longest row ({longest} tokens, images "
            "included); raise it, or prepare the dataset with this max_length so longer rows are dropped"
        )
    if config.quantization != "none" and not torch.cuda.is_available():
        raise FailedPrecondition(
            f"model.quantization {config.quantization} (QLoRA) needs a CUDA GPU with bitsandbytes and this worker "
            "has none; set model.quantization to QUANTIZATION_NONE here, or send the job to a GPU worker"
        )


def _lines(dataset_dir: Path, meta: dict[str, Any]):
    for split in ("train", "eval"):
        path = dataset_dir / meta.get(split, f"{split}.jsonl")
        if path.is_file():
            yield from (line for line in path.read_text().splitlines() if line.strip())


def run(request: jobs_pb2.TrainRequest, ctx: JobContext) -> JobResult | None:
    config = config_of(request, ctx.settings)
    if config.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        return launch(config, ctx)  # SFT's torchrun launch; each rank re-enters this entry
    return train_dpo(config, ctx, ctx.settings)


JOB = JobSpec(request_type=jobs_pb2.TrainRequest, validate=validate, run=run, resume_point=resume_point)
