"""Answer-only labels from the chat template (train/collator.py): on a multi-turn, multi-image Idefics3 row, the
tokens that carry loss, decoded one by one, are exactly the answers and their end of utterance; text in other turns
that looks like a header or an end of turn never does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmflow_worker.errors import FailedPrecondition
from vlmflow_worker.train.collator import IGNORE, AnswerOnlyCollator

ANSWERS = ["red", "It is blue.\nAssistant: quoted, and 2 dots.", "Both."]


def text(t: str) -> dict[str, str]:
    return {"type": "text", "text": t}


IMAGE = {"type": "image"}
CONVERSATION = [
    {"role": "system", "content": [text("Answer briefly.")]},
    {"role": "user", "content": [IMAGE, text("What colour is the shape?")]},
    {"role": "assistant", "content": [text(ANSWERS[0])]},
    {"role": "user", "content": [text("And this one?"), IMAGE]},
    {"role": "assistant", "content": [text(ANSWERS[1])]},
    {"role": "user", "content": [text("Which are round?")]},
    {"role": "assistant", "content": [text(ANSWERS[2])]},
]


@pytest.fixture(scope="module")
def processor(tiny_model_path: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_path)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    Image.new("RGB", (100, 60), "blue").save(tmp_path / "b.png")
    return tmp_path


def runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """The [start, end) index runs of labelled tokens."""
    kept = (labels != IGNORE).int().tolist()
    edges = [i for i in range(1, len(kept)) if kept[i] != kept[i - 1]]
    bounds = ([0] if kept[0] else []) + edges + ([len(kept)] if kept[-1] else [])
    return list(zip(bounds[::2], bounds[1::2], strict=True))


# Photos only (one processor call for the batch), and the second image a video frame (the per-image encoding path,
# whose placeholder expansions the collator records itself).
@pytest.mark.parametrize("video_frames", [[], [1]], ids=["photos", "photo-and-frame"])
def test_loss_tokens_decoded_one_by_one_are_the_answers_and_their_end_of_utterance(
    processor, images: Path, video_frames: list[int]
) -> None:
    tokenizer = processor.tokenizer
    row = {"messages": CONVERSATION, "images": ["a.png", "b.png"], "video_frames": video_frames}
    short = {"messages": [CONVERSATION[1], CONVERSATION[2]], "images": ["a.png"]}  # pads the batch
    batch = AnswerOnlyCollator(processor, images, max_length=8192)([row, short])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert torch.equal(labels[labels != IGNORE], ids[labels != IGNORE])

    found = runs(labels)
    assert len(found) == len(ANSWERS)
    for (start, end), answer in zip(found, ANSWERS, strict=True):
        pieces = [tokenizer.decode([token]) for token in ids[start:end].tolist()]
        assert "".join(pieces) == f" {answer}<end_of_utterance>", pieces
        assert pieces[-1] == "<end_of_utterance>"
        # Around the answer, unlabelled: the header's colon before it, the newline that ends the turn after it.
        assert tokenizer.decode(ids[start - 1 : start]) == ":"
        assert tokenizer.decode(ids[end : end + 1]) == "\n"
    # The padded short row: its one answer, then padding without loss.
    short_labels = batch["labels"][1]
    assert tokenizer.decode(short_labels[short_labels != IGNORE]) == f" {ANSWERS[0]}<end_of_utterance>"
    assert (short_labels[batch["attention_mask"][1] == 0] == IGNORE).all()


def test_an_assistant_header_typed_in_a_user_message_carries_no_loss(processor, images: Path) -> None:
    # Header-like text in the user turn, even a literal end of utterance before it (the special token itself once
    # tokenized) so that it looks exactly like a turn boundary: still the user's, so no loss.
    tricky = "Finish this:<end_of_utterance>\nAssistant: I am not the answer"
    messages = [{"role": "user", "content": [IMAGE, text(tricky)]}, {"role": "assistant", "content": [text("ok")]}]
    batch = AnswerOnlyCollator(processor, images, max_length=4096)([{"messages": messages, "images": ["a.png"]}])
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != IGNORE]) == " ok<end_of_utterance>"
    rendered = processor.tokenizer.decode(batch["input_ids"][0])
    assert rendered.count("Assistant: I am not the answer") == 1  # the text is in the sequence, without loss


def test_a_template_that_rewrites_earlier_turns_is_refused(processor, images: Path) -> None:
    class Rewriting:
        """A processor whose template drops the earlier answers once a later turn follows (as some reasoning
        templates do with their thinking): the answers' places cannot be read from prefixes."""

        tokenizer = processor.tokenizer

        def apply_chat_template(self, messages, add_generation_prompt=False, **kwargs):
            kept = [m for m in messages if m["role"] != "assistant" or m is messages[-1]]
            return processor.apply_chat_template(kept, add_generation_prompt=add_generation_prompt, **kwargs)

    collator = AnswerOnlyCollator(processor, images, max_length=4096)
    collator.processor = Rewriting()
    with pytest.raises(FailedPrecondition, match="prefix"):
        collator.answer_spans(CONVERSATION, Rewriting().apply_chat_template(CONVERSATION, tokenize=False))


# Each new family's tiny fixture (real processor and chat template): the loss tokens of the same multi-turn,
# multi-image row are exactly each answer followed by that family's end-of-turn token.
FAMILY_END_OF_TURN = {
    "tiny_smolvlm2_path": "<end_of_utterance>",
    "tiny_qwen2_5_vl_path": "<|im_end|>",
    "tiny_qwen3_vl_path": "<|im_end|>",
}


@pytest.mark.parametrize("fixture", list(FAMILY_END_OF_TURN))
def test_every_family_labels_exactly_its_answers_and_end_of_turn(
    fixture: str, images: Path, request: pytest.FixtureRequest
) -> None:
    from transformers import AutoProcessor

    family_processor = AutoProcessor.from_pretrained(request.getfixturevalue(fixture))
    batch = AnswerOnlyCollator(family_processor, images, max_length=1 << 16)(
        [{"messages": CONVERSATION, "images": ["a.png", "b.png"]}]
    )
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    found = runs(labels)
    assert len(found) == len(ANSWERS)
    end = FAMILY_END_OF_TURN[fixture]
    for (start, stop), answer in zip(found, ANSWERS, strict=True):
        decoded = family_processor.tokenizer.decode(ids[start:stop].tolist())
        assert decoded.strip() == f"{answer}{end}", decoded
        assert family_processor.tokenizer.decode(ids[stop - 1 : stop]) == end
