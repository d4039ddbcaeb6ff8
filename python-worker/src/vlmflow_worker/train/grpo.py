"""GRPO (online RL with verifiable rewards) of a model of any supported family, with TRL's GRPOTrainer.

Reads top to bottom like DPO (`train/dpo.py`), whose policy loading it shares, and SFT (`train/sft.py`), whose
plumbing both reuse: job events, atomic checkpoints, resume, cancel, OOM figures, torchrun launch.
1. prompts, 2. model and adapter, 3. rewards and trainer, 4. train (resuming), 5. save the adapter.

Data: an SFT-kind prepared dataset (conversation rows). Each row's prompt is its conversation up to the last
answer; the answer (or the row's `answers` list) is what the rewards (`train/rewards.py`) score the sampled
completions against. Every step samples `num_generations` completions per prompt, scores them, and moves the
policy towards the completions that beat their group's mean.

Batches: `training.micro_batch_size` counts completions (as TRL's per_device_train_batch_size does), so
micro_batch_size x gradient_accumulation_steps x processes must be a multiple of num_generations; one step then
trains on that many completions of (that / num_generations) prompts.

The reference (for the KL term, beta > 0) is never a second copy of the weights: from the base it is the model with
the new adapter disabled; from an SFT adapter (`model.adapter_uri`), TRL keeps a frozen copy of that adapter. The
saved adapter applies to the plain base either way, so Evaluate and Export treat it like an SFT adapter.

Progress events carry in `metrics`: reward (the weighted sum) and reward_std (its spread), rewards/<name>/mean and
/std per reward, kl (beta > 0), completions/mean_length, entropy and the clip ratios.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmflow.v1 import jobs_pb2
from vlmflow_worker import faults
from vlmflow_worker.errors import BadData, FailedPrecondition, InvalidArgument
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.spec import JobResult, JobSpec
from vlmflow_worker.precision import Precision, for_device
from vlmflow_worker.request_fields import set_fields
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train import rewards as R
from vlmflow_worker.train.checkpoints import AtomicCheckpointTrainer
from vlmflow_worker.train.config import SFTConfig
from vlmflow_worker.train.dpo import checked_inputs, request_paths
from vlmflow_worker.train.job import counted_lengths, launch, resume_point

# TRL 1.16's GRPOConfig.loss_type values and its other enumerations.
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_LEVELS = ("token", "sequence")
SCALE_REWARDS = ("group", "batch", "none")
# Trainer log keys that become progress figures.
PROGRESS_FIGURES = ("reward", "kl", "completions/", "entropy", "clip_ratio/", "frac_reward_zero_std")


@dataclass
class GRPOTrainConfig(SFTConfig):
    """Every knob of a GRPO run: the SFT ones (LoRA/DoRA/QLoRA, schedule, checkpoints) plus generation, loss and
    rewards."""

    learning_rate: float = field(
        default=1e-5, metadata={"help": "Peak learning rate (LoRA GRPO; full-model recipes use ~1e-6)."}
    )
    adapter_dir: str = field(
        default="",
        metadata={"help": "SFT adapter to continue from (its frozen copy is the KL reference); empty: base."},
    )
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (the group); >= 2."})
    max_completion_length: int = field(default=256, metadata={"help": "Longest sampled completion in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the completions."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling share of the completions, in (0, 1]."})
    beta: float = field(
        default=0.0,
        metadata={"help": "KL coefficient against the reference; 0 skips the reference pass (TRL's default)."},
    )
    loss_type: str = field(default="dapo", metadata={"help": f"One of {', '.join(LOSS_TYPES)} (TRL 1.16)."})
    importance_sampling_level: str = field(
        default="token", metadata={"help": "'token' (GRPO) or 'sequence' (GSPO) importance ratios."}
    )
    scale_rewards: str = field(default="group", metadata={"help": "Advantage scaling: 'group', 'batch' or 'none'."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping bound of the ratio (1 - epsilon)."})
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clipping bound (DAPO: 0.28); None: epsilon."}
    )
    num_iterations: int = field(default=1, metadata={"help": "Optimisation passes over each generated batch."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions cut at max_completion_length out of the loss."}
    )
    rewards: list[R.RewardSpec] = field(
        default_factory=lambda: [R.RewardSpec("vqa_accuracy")],
        metadata={"help": "The rewards (train/rewards.py); a completion's reward is their weighted sum."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.num_generations >= 2, "grpo.num_generations must be >= 2 (advantages compare a group)"),
            (self.max_completion_length > 0, "grpo.max_completion_length must be > 0"),
            (self.temperature > 0, "grpo.temperature must be > 0 (GRPO needs sampled, different completions)"),
            (0 < self.top_p <= 1, "grpo.top_p must be in (0, 1]"),
            (self.beta >= 0, "grpo.beta must be >= 0"),
            (self.loss_type in LOSS_TYPES, f"grpo.loss_type must be one of {', '.join(LOSS_TYPES)}"),
            (
                self.importance_sampling_level in IMPORTANCE_LEVELS,
                "grpo.importance_sampling_level must be 'token' or 'sequence'",
            ),
            (self.scale_rewards in SCALE_REWARDS, f"grpo.scale_rewards must be one of {', '.join(SCALE_REWARDS)}"),
            (self.epsilon > 0, "grpo.epsilon must be > 0"),
            (self.epsilon_high is None or self.epsilon_high > 0, "grpo.epsilon_high must be > 0"),
            (self.num_iterations >= 1, "grpo.num_iterations must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgument(message)
        completions = self.micro_batch_size * self.gradient_accumulation_steps * self.num_processes
        if completions % self.num_generations:
            raise InvalidArgument(
                f"training.micro_batch_size x gradient_accumulation_steps x num_processes ({completions} completions "
                f"a step) must be a multiple of grpo.num_generations ({self.num_generations}): each prompt's group "
                "is scored together. Change the batch or the number of generations"
            )
        for i, spec in enumerate(self.rewards):
            spec.check(f"grpo.rewards[{i}]")
        R.RewardSet(self.rewards)  # names unique, at least one

    @classmethod
    def from_request(
        cls, request: jobs_pb2.TrainRequest, dataset_dir: str, output_dir: str, adapter_dir: str = ""
    ) -> GRPOTrainConfig:
        base = SFTConfig.from_request(request, dataset_dir, output_dir)
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(SFTConfig)}
        if not request.training.HasField("learning_rate"):
            values.pop("learning_rate")  # GRPO's own default, not SFT's
        grpo = request.grpo
        numbers = ("num_generations", "max_completion_length", "temperature", "top_p", "beta", "epsilon")
        extra: dict[str, Any] = {"adapter_dir": adapter_dir}
        extra |= set_fields(grpo, {n: n for n in (*numbers, "num_iterations", "mask_truncated_completions")})
        extra |= set_fields(grpo, {n: n for n in ("loss_type", "importance_sampling_level", "scale_rewards")})
        extra |= set_fields(grpo, {"epsilon_high": "epsilon_high"})
        if grpo.rewards:
            extra["rewards"] = [reward_spec(r) for r in grpo.rewards]
        return cls(**values, **extra)


def reward_spec(message: jobs_pb2.RewardConfig) -> R.RewardSpec:
    values: dict[str, Any] = {"kind": message.kind}
    values |= set_fields(message, {n: n for n in ("weight", "relative_tolerance", "absolute_tolerance")})
    values |= set_fields(message, {n: n for n in ("name", "tag", "file", "function")})
    return R.RewardSpec(**values)


# ---------------------------------------------------------------------------------------------------------------
# 1. Prompts


def read_prompt_rows(dataset_dir: Path, split: str) -> list[dict[str, Any]]:
    """{id, prompt, images, references} per row of an SFT-kind split: the conversation up to its last answer, the
    images its turns show, and the answers to score completions against (the row's `answers`, else the answer)."""
    from vlmflow_worker.evaluate.job import to_eval_row

    meta = json.loads((dataset_dir / "dataset.json").read_text())
    if meta["kind"] != "sft":
        raise BadData(f"dataset_uri {dataset_dir} holds {meta['kind']} rows; GRPO needs conversation rows")
    path = dataset_dir / meta.get(split, f"{split}.jsonl")
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = []
    for i, line in enumerate(line for line in lines if line.strip()):
        row = to_eval_row(json.loads(line), i)
        rows.append({"id": row.id, "prompt": row.prompt, "images": row.images, "references": row.references})
    return rows


def _open_rows(batch: dict[str, list[str]], dataset_dir: str) -> dict[str, list[Any]]:
    """The dataset's transform: each JSON row -> prompt messages, opened images, references (TRL passes `references`
    and `id` on to the reward functions)."""
    rows = [json.loads(r) for r in batch["row"]]
    return {
        "prompt": [r["prompt"] for r in rows],
        "images": [[Image.open(Path(dataset_dir) / p).convert("RGB") for p in r["images"]] for r in rows],
        "references": [r["references"] for r in rows],
        "id": [r["id"] for r in rows],
    }


def as_dataset(rows: list[dict[str, Any]], dataset_dir: Path):
    """A `datasets.Dataset` as TRL requires, holding each row as JSON (Arrow would merge the content parts of all rows
    into one struct type), opened on access: images are read when a batch is drawn, not all up front."""
    from datasets import Dataset

    dataset = Dataset.from_dict({"row": [json.dumps(r) for r in rows]})
    return dataset.with_transform(partial(_open_rows, dataset_dir=str(dataset_dir)))


# ---------------------------------------------------------------------------------------------------------------
# 3. Rewards and trainer


def grpo_arguments(config: GRPOTrainConfig, output_dir: Path, has_eval: bool, precision: Precision):
    """TRL's GRPOConfig with the very TrainingArguments SFT uses, plus GRPO's own fields."""
    from trl import GRPOConfig

    from vlmflow_worker.train.sft import training_arguments

    base = training_arguments(config, output_dir, has_eval, precision)
    accepted = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init and f.name in accepted}
    values |= {
        "bf16": precision.bf16,
        "fp16": precision.fp16,
        # An eval batch holds whole groups: one prompt's num_generations completions.
        "per_device_eval_batch_size": config.num_generations,
    }
    return GRPOConfig(
        **values,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        loss_type=config.loss_type,
        importance_sampling_level=config.importance_sampling_level,
        scale_rewards=config.scale_rewards,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        num_iterations=config.num_iterations,
        mask_truncated_completions=config.mask_truncated_completions,
        reward_weights=[s.weight for s in config.rewards],
        disable_dropout=True,
        log_completions=False,
    )


def make_trainer(config, model, processor, peft_config, args, reward_set, train_rows, eval_rows, events):
    from trl import GRPOTrainer

    class AtomicGRPOTrainer(AtomicCheckpointTrainer, GRPOTrainer):
        """GRPOTrainer whose checkpoints appear by rename and are announced as job events."""

    dataset_dir = Path(config.dataset_dir)
    return AtomicGRPOTrainer(
        model=model,
        reward_funcs=list(reward_set.functions),
        args=args,
        train_dataset=as_dataset(train_rows, dataset_dir),
        eval_dataset=as_dataset(eval_rows, dataset_dir) if eval_rows else None,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[events, *faults.armed_callbacks(config.micro_batch_size)],  # test hooks, inert unless set
    )


class TrainerTokens:
    """Tokens (prompts and completions) the trainer has seen, for tokens/s: GRPO counts them in its state."""

    def __init__(self) -> None:
        self.trainer = None

    @property
    def tokens_seen(self) -> int:
        return int(self.trainer.state.num_input_tokens_seen) if self.trainer is not None else 0


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Train and save


def train_grpo(
    config: GRPOTrainConfig, ctx: JobContext | None = None, settings: WorkerSettings | None = None
) -> JobResult:
    from vlmflow_worker.train.dpo import job_events, load_policy, save_policy
    from vlmflow_worker.train.sft import device_for_rank, train_resuming

    output = Path(config.output_dir)
    checkpoints = output / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    settings = settings or WorkerSettings(port=0)

    # 1. Prompts and their references.
    dataset_dir = Path(config.dataset_dir)
    train_rows = read_prompt_rows(dataset_dir, "train")
    eval_rows = read_prompt_rows(dataset_dir, "eval")
    if not train_rows:
        raise BadData(f"dataset_uri {dataset_dir} has no train rows")
    has_eval = bool(eval_rows) and config.eval_steps > 0

    # 2. Model and adapter (the same policy loading as DPO).
    # Refused here (model.dtype the GPU cannot train in) before seconds of loading; the load picks the same dtype.
    precision = for_device(config.dtype, device_for_rank(), config.quantization, training=True)
    if ctx:
        ctx.progress("loading the model")
    model, processor, peft_config = load_policy(config, settings)

    # 3. Rewards (a custom one is imported here, in the job process, never in the server) and the trainer.
    reward_set = R.RewardSet(config.rewards, R.load_user_functions(config.rewards, settings))
    args = grpo_arguments(config, checkpoints, has_eval, precision)
    seen = TrainerTokens()
    events = job_events(ctx, seen, config, output / "training_log.jsonl", PROGRESS_FIGURES)
    trainer = make_trainer(
        config, model, processor, peft_config, args, reward_set, train_rows, eval_rows if has_eval else None, events
    )
    seen.trainer = trainer
    trainer.job = ctx

    # 4. Train, resuming from the newest complete checkpoint on disk (typed OOM / STORAGE / cancel, as SFT).
    result = train_resuming(trainer, config, ctx, events, output, checkpoints)

    # 5. The policy adapter only (not TRL's frozen "ref" copy), the processor and the settings, renamed into place.
    return save_policy(trainer, result, has_eval, processor, config, output, checkpoints)


# ---------------------------------------------------------------------------------------------------------------
# The job (Train with kind GRPO)


def config_of(request: jobs_pb2.TrainRequest, settings: WorkerSettings) -> GRPOTrainConfig:
    return GRPOTrainConfig.from_request(request, *request_paths(request, settings, "(SFT-kind) conversation"))


def validate(request: jobs_pb2.TrainRequest, settings: WorkerSettings) -> None:
    config = config_of(request, settings)
    needs = "GRPO needs conversation rows whose answers the rewards score completions against (prepared like SFT's)"
    meta = checked_inputs(request, config, "sft", needs)
    R.check_specs(config.rewards, settings)
    # Prep counted each row (prompt and answer, images included) with the collator's encoding: refuse here, before
    # GPU time, as SFT does.
    for row_id, tokens in counted_lengths(Path(config.dataset_dir), meta):
        if tokens > config.max_length:
            raise InvalidArgument(
                f"training.max_length {config.max_length} is below row {row_id}'s length ({tokens} tokens, images "
                "included); raise it, or prepare the dataset with this max_length so longer rows are dropped"
            )
    if config.quantization != "none" and not torch.cuda.is_available():
        raise FailedPrecondition(
            f"model.quantization {config.quantization} (QLoRA) needs a CUDA GPU with bitsandbytes and this worker "
            "has none; set model.quantization to QUANTIZATION_NONE here, or send the job to a GPU worker"
        )


def run(request: jobs_pb2.TrainRequest, ctx: JobContext) -> JobResult | None:
    config = config_of(request, ctx.settings)
    if config.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        return launch(config, ctx)  # SFT's torchrun launch; each rank re-enters this entry
    return train_grpo(config, ctx, ctx.settings)


JOB = JobSpec(request_type=jobs_pb2.TrainRequest, validate=validate, run=run, resume_point=resume_point)
