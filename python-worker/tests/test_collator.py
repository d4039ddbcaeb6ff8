"""The SFT collator puts loss on the assistant answers (and their end-of-utterance) and nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmflow_worker.errors import BadData
from vlmflow_worker.train.collator import IGNORE, AnswerOnlyCollator


@pytest.fixture(scope="module")
def processor(tiny_model_path: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_path)


def user(*parts):
    return {"role": "user", "content": list(parts)}


def answer(text: str):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def test_loss_tokens_are_exactly_the_answers_of_a_multi_turn_multi_image_sample(processor, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    Image.new("RGB", (100, 60), "blue").save(tmp_path / "b.png")
    image, text = {"type": "image"}, lambda t: {"type": "text", "text": t}
    rows = [
        {
            "messages": [
                {"role": "system", "content": [text("Answer briefly. Assistant: is a word here.")]},
                user(image, text("What colour is the shape?")),
                answer("red"),
                user(text("And this one?"), image),
                answer("It is blue. Assistant: quoted."),
            ],
            "images": ["a.png", "b.png"],
        },
        {"messages": [user(image, text("How many dots?")), answer("three")], "images": ["a.png"]},
    ]
    collator = AnswerOnlyCollator(processor, tmp_path, max_length=1024)
    batch = collator(rows)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["pixel_values"].shape[0] == 2
    tokenizer = processor.tokenizer
    for labels, expected in zip(batch["labels"], [["red", "It is blue. Assistant: quoted."], ["three"]], strict=True):
        kept = labels[labels != IGNORE].tolist()
        decoded = tokenizer.decode(kept, skip_special_tokens=False)
        assert decoded == "".join(f" {a}<end_of_utterance>" for a in expected)
    # image, padding and user tokens never carry loss
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert not ((batch["input_ids"] == image_id) & (batch["labels"] != IGNORE)).any()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert collator.tokens_seen == int(batch["attention_mask"].sum())


def test_a_row_over_max_length_is_an_error_not_a_cut(processor, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    rows = [{"id": "long", "messages": [user({"type": "image"}), answer("red " * 50)], "images": ["a.png"]}]
    with pytest.raises(BadData, match="row long is .* over max_length 40"):
        AnswerOnlyCollator(processor, tmp_path, max_length=40)(rows)
    assert torch.is_tensor(AnswerOnlyCollator(processor, tmp_path, max_length=4096)(rows)["labels"])
