"""The Train job, kind SFT: validate the request in the server, train in the child (under torchrun when
training.num_processes > 1), resume from the newest complete checkpoint under `<output_uri>/checkpoints`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import FailedPrecondition, InvalidArgument, NotFound, WorkerError
from vlmflow_worker.jobs import eventlog
from vlmflow_worker.jobs.child import INNER_ENV
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.spec import JobResult, JobSpec
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri
from vlmflow_worker.train.checkpoints import newest_checkpoint, step_of
from vlmflow_worker.train.config import SFTConfig


def config_of(request: jobs_pb2.TrainRequest, settings: WorkerSettings) -> SFTConfig:
    if not request.dataset_uri:
        raise InvalidArgument("dataset_uri is empty: pass the dataset folder PrepareDataset returned")
    if not request.output_uri:
        raise InvalidArgument("output_uri is empty: pass a run-scoped folder for checkpoints and the adapter")
    if not request.model.model_id:
        raise InvalidArgument("model.model_id is empty; give a hub id or a local model folder")
    dataset = resolve_uri(request.dataset_uri, settings, "dataset_uri")
    output = resolve_uri(request.output_uri, settings, "output_uri")
    return SFTConfig.from_request(request, str(dataset), str(output))


def validate(request: jobs_pb2.TrainRequest, settings: WorkerSettings) -> None:
    config = config_of(request, settings)
    meta_path = Path(config.dataset_dir) / "dataset.json"
    if not meta_path.is_file():
        raise NotFound(f"dataset_uri {request.dataset_uri!r} is not a prepared dataset (no dataset.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != "sft":
        raise InvalidArgument(
            f"dataset_uri {request.dataset_uri!r} holds {meta.get('kind')} rows; SFT needs conversation rows"
        )
    # Prep recorded each row's length (images included) with the collator's encoding: refuse here, before GPU time,
    # rather than when the collator reaches the row mid-training. Rows without a count (older prep output, or a
    # prep without a model) are counted in the job process before the first step (sft.refuse_long_rows).
    for row_id, tokens in counted_lengths(Path(config.dataset_dir), meta):
        if tokens > config.max_length:
            raise InvalidArgument(
                f"training.max_length {config.max_length} is below row {row_id}'s length ({tokens} tokens, images "
                "included); raise training.max_length, or prepare the dataset with this max_length so longer rows "
                "are dropped (they are never cut)"
            )
    if config.quantization != "none" and not torch.cuda.is_available():
        raise FailedPrecondition(
            f"model.quantization {config.quantization} (QLoRA) needs a CUDA GPU with bitsandbytes and this worker "
            "has none; set model.quantization to QUANTIZATION_NONE here, or send the job to a GPU worker"
        )


def counted_lengths(dataset_dir: Path, meta: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """(row id, tokens) for every train and eval row prep counted."""
    for split in ("train", "eval"):
        path = dataset_dir / meta.get(split, f"{split}.jsonl")
        if not path.is_file():
            continue
        with path.open() as lines:
            for number, line in enumerate(lines):
                if line.strip() and (row := json.loads(line)).get("num_tokens"):
                    yield str(row.get("id", f"{split}[{number}]")), int(row["num_tokens"])


def resume_point(request: jobs_pb2.TrainRequest, settings: WorkerSettings) -> tuple[int, str]:
    found = newest_checkpoint(resolve_uri(request.output_uri, settings, "output_uri") / "checkpoints")
    return (step_of(found), str(found)) if found else (0, "")


def run(request: jobs_pb2.TrainRequest, ctx: JobContext) -> JobResult | None:
    config = config_of(request, ctx.settings)
    if config.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        return launch(config, ctx)
    from vlmflow_worker.train.sft import train_sft

    return train_sft(config, ctx, ctx.settings)


def launch(config: SFTConfig, ctx: JobContext) -> None:
    """Runs this job under torchrun with num_processes processes; rank 0 writes the events, the end included."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={config.num_processes}",
        "-m",
        "vlmflow_worker.jobs.child",
        str(ctx.folder),
    ]
    ctx.log(f"launching {config.num_processes} processes with torchrun")
    code = subprocess.call(command, env={**os.environ, INNER_ENV: "1"})
    ctx.resync()
    events = eventlog.read_events(ctx.folder / eventlog.EVENTS)
    if events and eventlog.is_terminal(events[-1]):
        return None  # rank 0 recorded the end
    found = newest_checkpoint(Path(config.output_dir) / "checkpoints")
    ctx.last_checkpoint_uri = str(found) if found else ""
    raise WorkerError(f"the torchrun launch exited with status {code} before reporting a result")


JOB = JobSpec(request_type=jobs_pb2.TrainRequest, validate=validate, run=run, resume_point=resume_point)
