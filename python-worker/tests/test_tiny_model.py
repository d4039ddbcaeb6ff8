"""The tiny fixture model loads like a hub model, runs a forward pass without NaNs and generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmflow_worker.fixtures import tiny_model


@pytest.fixture(scope="module")
def loaded(tiny_model_path: Path):
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    return model, processor


def test_processor_has_smolvlm_tokens_and_chat_template(loaded) -> None:
    _, processor = loaded
    tokenizer = processor.tokenizer
    for token in tiny_model.SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id or token == tiny_model.UNK
        assert tokenizer.tokenize(token) == [token]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:"
    # Byte-level: any text survives a round trip.
    text = "Naïve café: 3 red circles, 日本."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_forward_has_no_nans_and_generate_answers(loaded) -> None:
    model, processor = loaded
    image = Image.new("RGB", (120, 40), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    # A 2x1 grid of 64 px tiles plus the global tile, 16 image tokens each.
    assert inputs["pixel_values"].shape[1:] == (3, 3, 64, 64)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 3 * tiny_model.IMAGE_SEQ_LEN
    with torch.no_grad():
        out = model(**inputs, labels=inputs["input_ids"])
    assert not torch.isnan(out.logits).any()
    assert torch.isfinite(out.loss)
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_build_is_idempotent_and_deterministic(tiny_model_path: Path, tmp_path: Path) -> None:
    # Already complete: returned as is, not rebuilt.
    mtime = (tiny_model_path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.build_tiny_model(tiny_model_path) == tiny_model_path
    assert (tiny_model_path / "model.safetensors").stat().st_mtime_ns == mtime
    # A fresh build gives the same weights and vocabulary (fixed seed), and leaves no temp folders behind.
    fresh = tiny_model.build_tiny_model(tmp_path / "tiny")
    assert (fresh / "model.safetensors").read_bytes() == (tiny_model_path / "model.safetensors").read_bytes()
    assert (fresh / "tokenizer.json").read_text() == (tiny_model_path / "tokenizer.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_special_token_ids_are_the_tokenizers_and_inside_the_vocabulary(tiny_model_path: Path) -> None:
    """The model's pad id is the tokenizer's, inside the vocabulary and distinct from EOS, and loading the saved
    config warns about none of this model's token ids."""
    import logging

    from transformers import AutoConfig, GenerationConfig

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]  # else an earlier load hides the warning
    try:
        config = AutoConfig.from_pretrained(tiny_model_path)
    finally:
        library_logger.removeHandler(handler)
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    tokenizer, text = processor.tokenizer, config.text_config
    generation = GenerationConfig.from_pretrained(tiny_model_path)

    assert text.vocab_size == len(tokenizer)
    assert config.pad_token_id == text.pad_token_id == generation.pad_token_id == tokenizer.pad_token_id
    assert 0 <= text.pad_token_id < text.vocab_size
    assert text.pad_token_id != tokenizer.eos_token_id  # padding mistaken for EOS (or the reverse) would show
    assert text.eos_token_id == generation.eos_token_id == tokenizer.eos_token_id
    assert 0 <= config.image_token_id < text.vocab_size
    # transformers validates special ids against the vocabulary and warns "must be ... between 0 and {vocab - 1}".
    # It also warns once per process about Idefics3Config's *class default* (pad 128002 in Llama's default 32,000
    # vocabulary), because it logs a diff against a default-built config; that one is not about this model.
    ours = f"between 0 and {text.vocab_size - 1}"
    assert [r.getMessage() for r in records if ours in r.getMessage()] == []
