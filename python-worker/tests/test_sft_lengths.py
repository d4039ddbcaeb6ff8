"""Over-length SFT rows are refused before the first step: by the job's validate from prep's counts (in the server,
before the job starts), and for datasets without counts by the job process with the collator's own encoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.errors import BadData, InvalidArgument
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train import job

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")


def dataset_folder(folder: Path, counts: list[int] | None, long_answer_row: int = -1) -> Path:
    """Four shape-colour rows as a prepared SFT dataset; `counts` are prep's num_tokens (None: an older prep that
    recorded none); the row at `long_answer_row` gets a long answer."""
    data = generate("shape_colour", 4, 0, folder)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["id"] = f"s0-{i}"
        if counts is not None:
            row["num_tokens"] = counts[i]
        if i == long_answer_row:
            row["messages"][-1]["content"] = [{"type": "text", "text": "red and round " * 60}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (folder / "eval.jsonl").write_text(json.dumps(rows[3]) + "\n")
    (folder / "dataset.json").write_text(json.dumps({"kind": "sft", "train": "train.jsonl", "eval": "eval.jsonl"}))
    return folder


def request(dataset: Path, max_length: int) -> jobs_pb2.TrainRequest:
    return jobs_pb2.TrainRequest(
        job_id="lengths",
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=common_pb2.ModelRef(model_id="tiny"),
        dataset_uri=str(dataset),
        output_uri="runs/lengths",
        training=jobs_pb2.TrainingConfig(max_length=max_length, max_steps=2),
    )


def test_validate_refuses_a_row_prep_counted_over_max_length(tmp_path: Path) -> None:
    dataset = dataset_folder(tmp_path / "data", counts=[120, 130, 110, 700])
    settings = WorkerSettings(host="127.0.0.1", port=0, artifact_root=tmp_path, data_roots=[tmp_path], job_capacity=1)
    job.validate(request(dataset, 700), settings)  # every row fits: accepted
    with pytest.raises(InvalidArgument) as refused:
        job.validate(request(dataset, 512), settings)
    assert "training.max_length 512" in refused.value.message
    assert "row s0-3" in refused.value.message and "700 tokens" in refused.value.message


def test_a_dataset_without_counts_is_counted_before_the_first_step(tmp_path: Path, tiny_model_path: Path) -> None:
    from transformers import AutoProcessor

    from vlmflow_worker.train.collator import AnswerOnlyCollator
    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.sft import train_sft

    dataset = dataset_folder(tmp_path / "data", counts=None, long_answer_row=1)
    settings = WorkerSettings(host="127.0.0.1", port=0, artifact_root=tmp_path, data_roots=[tmp_path], job_capacity=1)
    job.validate(request(dataset, 256), settings)  # nothing counted: the server cannot tell
    long_row = json.loads((dataset / "train.jsonl").read_text().splitlines()[1])
    tokens = AnswerOnlyCollator(AutoProcessor.from_pretrained(tiny_model_path), dataset, 256).count(long_row)
    assert tokens > 256

    output = tmp_path / "run"
    config = SFTConfig(
        model_id=str(tiny_model_path),
        dataset_dir=str(dataset),
        output_dir=str(output),
        dtype="float32",
        max_length=256,
        max_steps=2,
        micro_batch_size=1,
        eval_steps=0,
        save_steps=1,
    )
    with pytest.raises(BadData) as refused:
        train_sft(config)
    message = refused.value.message
    assert f"row s0-1 is {tokens} tokens" in message and "training.max_length 256" in message
    assert not any((output / "checkpoints").iterdir())  # refused before any step
    assert not (output / "training_log.jsonl").exists()
