"""Padding-free SFT batches (SFTConfig.packing, collator.py): the same loss as the padded batch, one forward pass
and a short training run, on rows of different lengths (images of different aspect ratios, so different tiles)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.train.collator import AnswerOnlyCollator

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 shape-colour rows, images stretched to 1:3…3:1, as a prepared SFT dataset folder."""
    folder = tmp_path_factory.mktemp("packing")
    data = generate("shape_colour", 8, 0, folder)
    rng = random.Random(0)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for i, row in enumerate(rows):
        path = folder / row["images"][0]
        ratio = rng.choice([1 / 3, 1 / 2, 2, 3])
        Image.open(path).resize((round(64 * min(1, ratio)), round(64 * min(1, 1 / ratio)))).save(path)
        row["id"] = f"r{i}"
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval.jsonl").write_text("")
    (folder / "dataset.json").write_text(json.dumps({"kind": "sft", "train": "train.jsonl", "eval": "eval.jsonl"}))
    return folder


def test_a_packed_batch_has_the_padded_batchs_loss(dataset: Path, tiny_model_path: Path) -> None:
    from vlmflow_worker.models import ModelSpec, load_model

    torch.set_num_threads(1)
    model, processor = load_model(ModelSpec(str(tiny_model_path), dtype="float32"), device="cpu")
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()][:4]
    padded = AnswerOnlyCollator(processor, dataset, 2048)(rows)
    packed = AnswerOnlyCollator(processor, dataset, 2048, packing=True)(rows)

    lengths = padded["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "the rows should differ in length, or padding is not exercised"
    assert packed["input_ids"].shape == (1, int(lengths.sum()))
    assert "attention_mask" not in packed
    with torch.no_grad():  # no KV cache, as in training: with one, transformers ignores the packed position_ids
        loss_padded = model(**padded, use_cache=False).loss
        loss_packed = model(**packed, use_cache=False).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)


def test_a_packed_training_run_follows_the_padded_loss_curve(dataset: Path, tiny_model_path: Path, tmp_path) -> None:
    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.sft import train_sft

    def losses(packing: bool) -> list[float]:
        config = SFTConfig(
            model_id=str(tiny_model_path),
            dataset_dir=str(dataset),
            output_dir=str(tmp_path / f"packing-{packing}"),
            dtype="float32",
            lora_dropout=0.0,
            learning_rate=3e-3,
            max_steps=4,
            micro_batch_size=4,
            gradient_accumulation_steps=1,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            gradient_checkpointing=False,
            logging_steps=1,
            eval_steps=0,
            packing=packing,
        )
        train_sft(config)
        log = (tmp_path / f"packing-{packing}" / "training_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in log if "loss" in json.loads(line)]

    padded, packed = losses(False), losses(True)
    assert len(padded) == 4
    assert packed == pytest.approx(padded, rel=1e-3)
