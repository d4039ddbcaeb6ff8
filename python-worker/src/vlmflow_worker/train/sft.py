"""SFT of a model of any supported family (families/) with LoRA, DoRA or QLoRA, on transformers' Trainer with our
collator.

Reads top to bottom: 1. data, 2. model, 3. adapters, 4. trainer, 5. train (resuming), 6. save the adapter.
Used by the Train job (`train/job.py`); also callable directly (tests, benchmarks) with `ctx=None`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainingArguments, set_seed

from vlmflow_worker import faults
from vlmflow_worker.errors import BadData, Cancelled, InvalidArgument, OutOfMemory
from vlmflow_worker.families import family_of
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.spec import JobResult
from vlmflow_worker.precision import Precision, for_device
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train.checkpoints import (
    AtomicCheckpointTrainer,
    clean_staging,
    is_store_failure,
    newest_checkpoint,
    step_of,
    storage_error,
)
from vlmflow_worker.train.collator import AnswerOnlyCollator
from vlmflow_worker.train.config import SFTConfig

DATALOADER_WORKERS_ENV = "VLMFLOW_DATALOADER_WORKERS"


class Rows(Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def read_split(dataset_dir: Path, split: str) -> list[dict[str, Any]]:
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    if meta["kind"] != "sft":
        raise BadData(f"dataset_uri {dataset_dir} holds {meta['kind']} rows; SFT needs conversation rows")
    path = dataset_dir / meta[split]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def device_for_rank() -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def lora_targets(config: SFTConfig, model) -> str:
    """A regex over module names: the text tower's projections, and the vision tower's with tune_vision, named as
    the loaded model's family names them (families/)."""
    return family_of(model.config).lora_targets(config.target_modules, config.tune_vision)


def add_adapters(model, config: SFTConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_targets(config, model),
        use_dora=config.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def no_kv_cache(model) -> None:
    """No KV cache while training: it conflicts with checkpointing, and with one transformers ignores packed
    position_ids. Qwen-VL's language model reads its own text config's use_cache, not the top-level one."""
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False


def load_for_training(config: SFTConfig, settings: WorkerSettings | None):
    from vlmflow_worker.models import ModelSpec, load_model

    spec = ModelSpec(config.model_id, config.revision, config.quantization, dtype=config.dtype)
    model, processor = load_model(spec, settings=settings, device=device_for_rank())
    no_kv_cache(model)
    set_seed(config.seed)  # the LoRA init
    return add_adapters(model, config), processor


def training_arguments(
    config: SFTConfig, output_dir: Path, has_eval: bool, precision: Precision, workers: int = 0
) -> TrainingArguments:
    """`workers`: data-loader processes (dataloader_workers()); 0 collates in this process, as DPO needs: its
    collator counts the tokens for tokens/s."""
    on_cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        bf16=precision.bf16,
        fp16=precision.fp16,  # fp16 autocast with the trainer's GradScaler (loss scaling)
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=config.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit or None,
        remove_unused_columns=False,  # rows go to our collator as they are
        # Decoding and tiling in worker processes, a batch or two ahead of the step that needs it; the order of rows
        # is the sampler's, in this process, so a resume still skips to the same rows (tests/test_data_workers.py).
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_prefetch_factor=2 if workers > 0 else None,
        report_to="none",
        disable_tqdm=True,
        use_cpu=on_cpu,
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every forward
        ddp_backend="gloo" if on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )


def dataloader_workers() -> int:
    """Data-loader worker processes: VLMFLOW_DATALOADER_WORKERS, else min(2, cores) with a GPU and 0 without. With a
    GPU the cores are idle while it computes, so decoding the next batches there hides it; on a CPU-only box the
    matmuls already use every core and workers only move the work around (bench/train.py --data-workers 0,2 on a
    2-core box: 40 samples/s with none, 38 with 2)."""
    value = os.environ.get(DATALOADER_WORKERS_ENV, "").strip()
    if not value:
        return min(2, os.cpu_count() or 1) if torch.cuda.is_available() else 0
    if not value.isdigit():
        raise InvalidArgument(f"{DATALOADER_WORKERS_ENV} must be a whole number >= 0, got {value!r}")
    return int(value)


class SeenTokens:
    """Real (unpadded) tokens trained on so far, for tokens/s."""

    tokens_seen = 0


class CountingTrainer(AtomicCheckpointTrainer):
    """Counts each training batch's real tokens here, in the training process: the collator that could count them
    runs in the data-loader workers. Padded batches count their attention mask; a packed batch is all real tokens."""

    def __init__(self, *args, seen: SeenTokens, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen = seen

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        self.seen.tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, *args, **kwargs)


def refuse_long_rows(rows: list[dict[str, Any]], collator: AnswerOnlyCollator, max_length: int) -> None:
    """Before the first step, not when the collator reaches the row: every row within max_length. Rows prep
    counted are compared by their count (the job's validate already did, in the server); rows without one (older
    prep output, or a prep without a model) are counted here with the collator's own encoding."""
    for number, row in enumerate(rows):
        tokens = int(row.get("num_tokens") or 0) or collator.count(row)
        if tokens > max_length:
            raise BadData(
                f"row {row.get('id', number)} is {tokens} tokens (images included), over training.max_length "
                f"{max_length}; raise training.max_length, or prepare the dataset with this max_length so such rows "
                "are dropped (they are never cut)"
            )


def rope_index_of(model):
    """The model's multimodal rotary positions (Qwen-VL's `get_rope_index`), which packing its rows needs; None for a
    family with 1-D positions. It reads the config only, never the weights, so data-loader workers (forked) can call
    it on their CPU tensors."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "model", None), "get_rope_index", None)


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def frozen_vision_out_of_backward(model) -> int:
    """With gradient checkpointing, transformers, PEFT and TRL hook every sub-model's input embeddings so their output
    requires grad (`enable_input_require_grads`), the vision tower's patch embeddings included: with no adapter in
    the vision tower that makes every step backpropagate through the whole frozen SigLIP for nothing (on
    SmolVLM-256M, one 5-tile row: backward 13.3 s with the hook, 1.4 s without). Non-reentrant checkpointing does not
    need it, so the vision tower's hooks go; the text embeddings' stay. Called once training has begun, after the
    trainer has enabled checkpointing. Returns how many hooks it removed. The vision tower is `vision_model` in
    Idefics3 and SmolVLM2, `visual` in Qwen2.5-VL (whose patch embedding transformers hooks too; Qwen3-VL's is not)."""
    removed = 0
    for name, module in model.named_modules():
        tower = name.rsplit(".", 1)[-1]
        if ("vision" not in tower and tower != "visual") or not hasattr(module, "get_input_embeddings"):
            continue
        try:
            embeddings = module.get_input_embeddings()
        except NotImplementedError:
            continue
        hooks = getattr(embeddings, "_forward_hooks", {})
        for key, hook in list(hooks.items()):
            if getattr(hook, "__name__", "").startswith("make_inputs_require_grad"):  # transformers', PEFT's, TRL's
                del hooks[key]
                removed += 1
    return removed


class JobEvents(TrainerCallback):
    """Trainer hooks -> job events; cancellation -> checkpoint and stop at the end of the current step."""

    def __init__(self, ctx: JobContext | None, seen: SeenTokens, config: SFTConfig, log: Path) -> None:
        self.ctx = ctx
        self.seen = seen  # SFT: the trainer's count; DPO: its collator's (it collates in this process)
        self.config = config
        self.log = log
        self.cancelled = False
        self.history: list[dict[str, Any]] = []
        self.last_eval: tuple[int, dict[str, float]] = (-1, {})
        self._mark = (time.perf_counter(), 0, 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.perf_counter(), state.global_step, self.seen.tokens_seen)
        if not self.config.tune_vision and kwargs.get("model") is not None:
            frozen_vision_out_of_backward(kwargs["model"])
        if self.ctx:
            self.ctx.progress("training", step=state.global_step, total_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.ctx:  # every step: the live step count, and the sign of life the worker's stuck check waits for
            self.ctx.progress("training", step=state.global_step, total_steps=state.max_steps)
        if self._cancel_requested(args):
            self.cancelled = True
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True

    def _cancel_requested(self, args) -> bool:
        flag = bool(self.ctx and self.ctx.cancelled())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank must stop at the same step, or the others wait forever in the next all-reduce.
            tensor = torch.tensor([int(flag)], device=args.device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flag = bool(tensor.item())
        return flag

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        entry = {"step": state.global_step, "epoch": state.epoch, **logs}
        if "loss" in logs:
            now, step, tokens = time.perf_counter(), state.global_step, self.seen.tokens_seen
            then, step0, tokens0 = self._mark
            elapsed = max(now - then, 1e-9)
            samples = (step - step0) * args.per_device_train_batch_size * args.gradient_accumulation_steps
            entry["samples_per_second"] = samples * args.world_size / elapsed
            entry["tokens_per_second"] = (tokens - tokens0) * args.world_size / elapsed
            entry["peak_memory_bytes"] = peak_memory_bytes()
            self._mark = (now, step, tokens)
            if self.ctx:
                self.ctx.progress(
                    "training",
                    step=state.global_step,
                    total_steps=state.max_steps,
                    epoch=state.epoch or 0.0,
                    loss=logs["loss"],
                    learning_rate=logs.get("learning_rate", 0.0),
                    grad_norm=logs.get("grad_norm") or 0.0,
                    samples_per_second=entry["samples_per_second"],
                    tokens_per_second=entry["tokens_per_second"],
                    peak_memory_bytes=entry["peak_memory_bytes"],
                )
        self.history.append(entry)
        if args.should_save:
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        numbers = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
        self.last_eval = (state.global_step, numbers)
        if self.ctx and numbers:
            self.ctx.eval(state.global_step, numbers)


def oom_error(err: BaseException, config: SFTConfig, step: int) -> OutOfMemory:
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        figures = f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB of {total / 2**30:.1f} GiB on the GPU"
    else:
        figures = f"peak resident {peak_memory_bytes() / 2**30:.1f} GiB of host memory"
    return OutOfMemory(
        f"out of memory at step {step} ({figures}; micro_batch_size {config.micro_batch_size}, max_length "
        f"{config.max_length}, gradient_checkpointing {config.gradient_checkpointing}, quantization "
        f"{config.quantization}). Lower training.micro_batch_size and raise gradient_accumulation_steps to keep the "
        "effective batch, turn on gradient_checkpointing, use QUANTIZATION_NF4, or prepare smaller images",
        detail=str(err)[:2000],
    )


def train_sft(config: SFTConfig, ctx: JobContext | None = None, settings: WorkerSettings | None = None) -> JobResult:
    output = Path(config.output_dir)
    checkpoints = output / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)

    # 1. Data: the prepared splits; every row's length is checked before the first step (never cut).
    dataset_dir = Path(config.dataset_dir)
    train_rows, eval_rows = read_split(dataset_dir, "train"), read_split(dataset_dir, "eval")
    if not train_rows:
        raise BadData(f"dataset_uri {dataset_dir} has no train rows")
    has_eval = bool(eval_rows) and config.eval_steps > 0

    # 2-3. Model, processor and adapters.
    # Refused here (model.dtype the GPU cannot train in) before seconds of loading; the load picks the same dtype.
    precision = for_device(config.dtype, device_for_rank(), config.quantization, training=True)
    if ctx:
        ctx.progress("loading the model")
    model, processor = load_for_training(config, settings)
    collator = AnswerOnlyCollator(
        processor, dataset_dir, config.max_length, packing=config.packing, rope_index=rope_index_of(model)
    )
    refuse_long_rows(train_rows + (eval_rows if has_eval else []), collator, config.max_length)

    # 4. Trainer, with our events and atomic checkpoints.
    args = training_arguments(config, checkpoints, has_eval, precision, dataloader_workers())
    seen = SeenTokens()
    events = JobEvents(ctx, seen, config, output / "training_log.jsonl")
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=Rows(train_rows),
        eval_dataset=Rows(eval_rows) if has_eval else None,
        data_collator=collator,
        # Fault hooks for the durability tests (issue 7): none unless their variables are set.
        callbacks=[events, *faults.armed_callbacks(config.micro_batch_size)],
        seen=seen,
    )
    trainer.job = ctx

    # 5. Train, resuming from the newest complete checkpoint on disk (optimizer, scheduler, RNG, data position).
    result = train_resuming(trainer, config, ctx, events, output, checkpoints)

    # 6. The adapter (safetensors) and the processor, renamed into place; final eval metrics.
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    metrics["global_step"] = float(trainer.state.global_step)
    if has_eval:
        step, numbers = events.last_eval
        if step != trainer.state.global_step:  # the Trainer evaluates at the last step itself when it is due
            trainer.evaluate()
            numbers = events.last_eval[1]
        metrics |= numbers
    return save_adapter(trainer, processor, config, output, checkpoints, metrics)


def train_resuming(trainer, config: SFTConfig, ctx: JobContext | None, events, output: Path, checkpoints: Path):
    """Runs trainer.train from the newest complete checkpoint on disk (SFT and DPO alike), with typed failures:
    out of memory (with what to change), a store that refuses writes (STORAGE), and cancellation."""
    clean_staging(checkpoints)
    resume = newest_checkpoint(checkpoints)
    if resume is not None and ctx is not None:
        ctx.last_checkpoint_uri = str(resume)
        ctx.log(f"resuming from {resume} (step {step_of(resume)})")
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise oom_error(err, config, trainer.state.global_step) from err
    except OSError as err:  # the store filled up or turned read-only (the training log, say): typed STORAGE
        if not is_store_failure(err):
            raise
        raise storage_error(err, str(err.filename or output), checkpoints) from err
    if events.cancelled:
        message = f"cancelled at step {trainer.state.global_step}; a checkpoint was saved to resume from"
        raise ctx.stop_error(message) if ctx is not None else Cancelled(message)
    return result


def save_adapter(trainer, processor, config, output: Path, checkpoints: Path, metrics: dict[str, float], **save_kw):
    """The adapter (safetensors), the processor and the settings, staged then renamed into place; the job result."""
    adapter = output / "adapter"
    if trainer.args.should_save:
        staging = output / ".tmp-adapter"
        shutil.rmtree(staging, ignore_errors=True)
        trainer.model.save_pretrained(staging, safe_serialization=True, **save_kw)
        processor.save_pretrained(staging)
        (staging / "training_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        shutil.rmtree(adapter, ignore_errors=True)
        os.rename(staging, adapter)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    artifacts = {
        "adapter": str(adapter),
        "checkpoints": str(checkpoints),
        "training_log": str(output / "training_log.jsonl"),
        "metrics": str(output / "metrics.json"),
    }
    return JobResult(artifacts=artifacts, metrics=metrics)
