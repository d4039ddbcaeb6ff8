"""Data-loader workers (train/sft.py: dataloader_workers) decode and tile ahead of the step without changing what is
trained: the same loss curve as collating in the training process, the same curve and adapter after a resume from a
mid-epoch checkpoint, and tokens/s still counted (in the trainer, since the collator runs in the workers)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.train.config import SFTConfig

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("workers")
    rows = [json.loads(line) for line in generate("shape_colour", 6, 0, folder).read_text().splitlines()]
    (folder / "train.jsonl").write_text("".join(json.dumps(r | {"id": f"r{i}"}) + "\n" for i, r in enumerate(rows)))
    (folder / "eval.jsonl").write_text("")
    (folder / "dataset.json").write_text(json.dumps({"kind": "sft", "train": "train.jsonl", "eval": "eval.jsonl"}))
    return folder


def train(dataset: Path, model: Path, output: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    from vlmflow_worker.train.sft import train_sft

    monkeypatch.setenv("VLMFLOW_DATALOADER_WORKERS", str(workers))
    config = SFTConfig(
        model_id=str(model),
        dataset_dir=str(dataset),
        output_dir=str(output),
        dtype="float32",
        lora_dropout=0.0,
        learning_rate=3e-3,
        max_steps=6,  # 3 steps an epoch: the run crosses into a second, reshuffled epoch
        micro_batch_size=2,
        warmup_ratio=0.0,
        gradient_checkpointing=False,
        logging_steps=1,
        save_steps=2,
        eval_steps=0,
        seed=3,
    )
    train_sft(config)
    return [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]


def losses(log: list[dict], after: int = 0) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in log if "loss" in e and e["step"] > after}


def test_workers_train_the_same_curve_and_resume_to_the_same_adapter(
    dataset: Path, tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_workers = train(dataset, tiny_model_path, tmp_path / "workers", 2, monkeypatch)
    in_process = train(dataset, tiny_model_path, tmp_path / "in-process", 0, monkeypatch)
    assert len(losses(with_workers)) == 6
    assert losses(with_workers) == pytest.approx(losses(in_process), rel=1e-5)
    assert all(e["tokens_per_second"] > 0 for e in with_workers if "loss" in e)  # counted with the collator away

    # Back to the mid-epoch checkpoint at step 2, as if killed there, and resumed with workers.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "workers", resumed)
    for name in ("checkpoint-4", "checkpoint-6"):
        shutil.rmtree(resumed / "checkpoints" / name)
    shutil.rmtree(resumed / "adapter")
    kept = [e for e in with_workers if e["step"] <= 2]
    (resumed / "training_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    log = train(dataset, tiny_model_path, resumed, 2, monkeypatch)
    assert [e["step"] for e in log[len(kept) :] if "loss" in e] == [3, 4, 5, 6]  # resumed, nothing redone
    assert losses(log, after=2) == pytest.approx(losses(with_workers, after=2), rel=1e-5)
    first = load_file(tmp_path / "workers" / "adapter" / "adapter_model.safetensors")
    second = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-5, atol=1e-6)


def test_the_worker_count_is_a_setting_with_a_default_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmflow_worker.errors import InvalidArgument
    from vlmflow_worker.train.sft import dataloader_workers

    monkeypatch.delenv("VLMFLOW_DATALOADER_WORKERS", raising=False)
    expected = min(2, os.cpu_count() or 1) if torch.cuda.is_available() else 0  # CPU-only: the matmuls use every core
    assert dataloader_workers() == expected
    monkeypatch.setenv("VLMFLOW_DATALOADER_WORKERS", "3")
    assert dataloader_workers() == 3
    monkeypatch.setenv("VLMFLOW_DATALOADER_WORKERS", "two")
    with pytest.raises(InvalidArgument, match="VLMFLOW_DATALOADER_WORKERS must be a whole number"):
        dataloader_workers()
