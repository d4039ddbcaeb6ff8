"""The per-family tiny fixtures load like hub models, render their family's chat template, expand images and videos
by their family's arithmetic, and generate on an image and on a video."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.video_utils import VideoMetadata

from vlmflow_worker.fixtures import tiny_qwen2_5_vl, tiny_qwen3_vl, tiny_smolvlm2

# A two-turn conversation with an image, the shape of every SFT row.
CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
    {"role": "user", "content": [{"type": "text", "text": "And the square?"}]},
]


def _load(path: Path):
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    return model, processor


def _video(seconds: int, fps: int = 4, size: tuple[int, int] = (64, 48)) -> tuple[np.ndarray, VideoMetadata]:
    """Decoded frames (T, H, W, 3) whose colour changes, and the metadata a decoder reports for them (the worker
    decodes with PyAV; the processors sample frames from the metadata's fps and duration)."""
    frames = np.stack(
        [np.full((size[1], size[0], 3), (40 * i % 256, 90, 200 - 10 * i % 200), np.uint8) for i in range(seconds * fps)]
    )
    metadata = VideoMetadata(
        total_num_frames=len(frames), fps=fps, width=size[0], height=size[1], duration=seconds, video_backend="pyav"
    )
    return frames, metadata


def _smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int) -> tuple[int, int]:
    """Qwen-VL's resize rule (qwen-vl-utils' smart_resize), written out here rather than imported from transformers:
    round each side to a multiple of `factor`, then scale down (or up) keeping the aspect ratio until the area is
    within the bounds."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def _generate(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(new) <= 3
    return new


BUILDERS = {
    "smolvlm2": tiny_smolvlm2.build_tiny_smolvlm2,
    "qwen2_5_vl": tiny_qwen2_5_vl.build_tiny_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl.build_tiny_qwen3_vl,
}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_builds_offline_in_seconds_and_is_kept_while_its_fingerprint_matches(family: str, tmp_path: Path) -> None:
    build = BUILDERS[family]
    start = time.perf_counter()
    folder = build(tmp_path / family)
    assert time.perf_counter() - start < 30
    stamp = (folder / "vlmflow_tiny_family.json").stat().st_mtime_ns
    assert build(folder) == folder
    assert (folder / "vlmflow_tiny_family.json").stat().st_mtime_ns == stamp  # same fingerprint: not rebuilt


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_a_training_step_has_a_finite_loss_and_reaches_both_towers(family: str, request: pytest.FixtureRequest) -> None:
    # Loaded fresh: the module-scoped models above stay in eval mode without gradients.
    model, processor = _load(request.getfixturevalue(f"tiny_{family}_path"))
    model.train()
    text = processor.apply_chat_template(CONVERSATION[:2])
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    images = [[image]] if family == "smolvlm2" else [image]
    inputs = processor(text=text, images=images, return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any("visual" in name or "vision" in name for name, g in grads.items() if g.abs().sum() > 0)
    assert any("language_model" in name or "text_model" in name for name, g in grads.items() if g.abs().sum() > 0)


# --- SmolVLM2 -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smolvlm2(tiny_smolvlm2_path: Path):
    return _load(tiny_smolvlm2_path)


def test_smolvlm2_config_is_the_real_model_type_with_pad_inside_the_vocabulary(smolvlm2) -> None:
    model, processor = smolvlm2
    config = json.loads((Path(model.name_or_path) / "config.json").read_text())
    assert config["model_type"] == "smolvlm"
    assert config["architectures"] == ["SmolVLMForConditionalGeneration"]
    assert type(processor).__name__ == "SmolVLMProcessor"
    assert type(processor.video_processor).__name__ == "SmolVLMVideoProcessor"
    tokenizer = processor.tokenizer
    vocab = model.config.text_config.vocab_size
    assert model.config.pad_token_id == model.config.text_config.pad_token_id == tokenizer.pad_token_id
    assert 0 <= tokenizer.pad_token_id < vocab and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>") < vocab
    assert tokenizer.eos_token == "<end_of_utterance>"


def test_smolvlm2_chat_template_renders_as_the_real_one(smolvlm2) -> None:
    _, processor = smolvlm2
    rendered = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>User:<image>What colour is the circle?<end_of_utterance>\n"
        "Assistant: Red.<end_of_utterance>\n"
        "User: And the square?<end_of_utterance>\n"
        "Assistant:"
    )
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    assert processor.apply_chat_template(video, add_generation_prompt=True) == (
        "<|im_start|>User: <video>What happens?<end_of_utterance>\nAssistant:"
    )


@pytest.mark.parametrize(("size", "tiles"), [((96, 48), 3), ((64, 64), 5), ((20, 120), 3)])
def test_smolvlm2_expands_an_image_into_its_tiles(smolvlm2, size: tuple[int, int], tiles: int) -> None:
    _, processor = smolvlm2
    # Idefics3 arithmetic: resize to a longest edge of 128, cut into ceil(h/64) x ceil(w/64) tiles of 64, plus the
    # global tile (none when the image is one tile already); 16 <image> tokens per tile.
    w, h = size
    scale = tiny_smolvlm2.LONGEST_EDGE / max(w, h)
    rows, cols = math.ceil(round(h * scale) / 64), math.ceil(round(w * scale) / 64)
    assert rows * cols + (1 if rows * cols > 1 else 0) == tiles
    inputs = processor(text="<image>Hi", images=[[Image.new("RGB", size, (9, 99, 199))]])
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert inputs["input_ids"][0].count(image_id) == tiles * tiny_smolvlm2.IMAGE_SEQ_LEN


def test_smolvlm2_generates_on_an_image(smolvlm2) -> None:
    model, processor = smolvlm2
    prompt = processor.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True)
    inputs = processor(text=prompt, images=[[Image.new("RGB", (80, 60), (200, 30, 30))]], return_tensors="pt")
    _generate(model, inputs)


def test_smolvlm2_samples_a_video_by_fps_and_generates_on_it(smolvlm2) -> None:
    model, processor = smolvlm2
    frames, metadata = _video(seconds=3)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # SmolVLM wants media nested per sample.
    inputs = processor(text=prompt, videos=[[frames]], video_metadata=[metadata], return_tensors="pt")
    # 3 s at the fixture's 1 fps: 3 of the 12 frames (under its 4-frame cap), each one 64 px tile of 16 <image> tokens.
    sampled = 3
    assert inputs["pixel_values"].shape[:2] == (1, sampled)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == sampled * tiny_smolvlm2.IMAGE_SEQ_LEN
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert "You are provided the following series of three frames from a 0:00:03 [H:MM:SS] video." in text
    _generate(model, inputs)


# --- Qwen2.5-VL and Qwen3-VL ---------------------------------------------------------------------------------------

QWEN = ["qwen2_5_vl", "qwen3_vl"]
QWEN_MODULES = {"qwen2_5_vl": tiny_qwen2_5_vl, "qwen3_vl": tiny_qwen3_vl}
QWEN_CLASSES = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}
# The user's first turn as each template renders it: Qwen2.5-VL's adds a default system prompt, Qwen3-VL's does not.
QWEN_PREAMBLE = {"qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "qwen3_vl": ""}


@pytest.fixture(scope="module", params=QWEN)
def qwen(request: pytest.FixtureRequest):
    family = request.param
    model, processor = _load(request.getfixturevalue(f"tiny_{family}_path"))
    return family, model, processor


def test_qwen_config_and_tokens_are_the_real_layout(qwen) -> None:
    family, model, processor = qwen
    module = QWEN_MODULES[family]
    config = json.loads((Path(model.name_or_path) / "config.json").read_text())
    assert config["model_type"] == family
    assert [config["architectures"][0], type(processor).__name__, type(processor.video_processor).__name__] == list(
        QWEN_CLASSES[family]
    )
    tokenizer = processor.tokenizer
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    vocab = model.config.text_config.vocab_size
    ids = [tokenizer.convert_tokens_to_ids(token) for token, _ in module.ADDED_TOKENS]
    # Consecutive, in the real order, each one token, all inside the vocabulary.
    assert ids == list(range(ids[0], ids[0] + len(ids))) and ids[-1] < vocab
    for token, _ in module.ADDED_TOKENS:
        assert tokenizer.tokenize(token) == [token]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id == model.generation_config.pad_token_id
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    text_config = model.config.text_config
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    assert sum(text_config.rope_parameters["mrope_section"]) == head_dim // 2
    text = "Naïve café: 3 red circles, 日本."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_qwen3_vl_template_is_the_published_one_byte_for_byte(tiny_qwen3_vl_path: Path) -> None:
    saved = (tiny_qwen3_vl_path / "chat_template.jinja").read_bytes()
    assert saved == tiny_qwen3_vl.CHAT_TEMPLATE.encode() and len(saved) == 5292
    digest = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    assert hashlib.sha256(saved).hexdigest() == digest


def test_qwen_chat_template_renders_as_the_real_one(qwen) -> None:
    family, _, processor = qwen
    rendered = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert rendered == QWEN_PREAMBLE[family] + (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour is the circle?<|im_end|>\n"
        "<|im_start|>assistant\nRed.<|im_end|>\n"
        "<|im_start|>user\nAnd the square?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# Image tokens per (width, height) at each fixture's bounds: Qwen2.5-VL one per 28x28 px, within 56x56..112x112;
# Qwen3-VL one per 32x32 px, within 64x64..128x128.
QWEN_IMAGES = {
    "qwen2_5_vl": [((64, 48), 4), ((200, 100), 10), ((20, 300), 11)],
    "qwen3_vl": [((64, 48), 4), ((200, 100), 10), ((20, 300), 9)],
}


def test_qwen_expands_an_image_by_smart_resize(qwen) -> None:
    family, _, processor = qwen
    module = QWEN_MODULES[family]
    for (w, h), tokens in QWEN_IMAGES[family]:
        rh, rw = _smart_resize(h, w, module.MIN_PIXELS, module.MAX_PIXELS, factor=module.FACTOR)
        assert (rh // module.FACTOR) * (rw // module.FACTOR) == tokens
        inputs = processor(text="<|vision_start|><|image_pad|><|vision_end|>Hi", images=[Image.new("RGB", (w, h))])
        patch = module.PATCH_SIZE
        assert inputs["image_grid_thw"].tolist() == [[1, rh // patch, rw // patch]]
        assert inputs["input_ids"][0].count(processor.image_token_id) == tokens


def test_qwen_generates_on_an_image(qwen) -> None:
    _, model, processor = qwen
    prompt = processor.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True)
    inputs = processor(text=prompt, images=[Image.new("RGB", (80, 60), (200, 30, 30))], return_tensors="pt")
    _generate(model, inputs)


def test_qwen_samples_a_video_by_fps_and_generates_on_it(qwen) -> None:
    family, model, processor = qwen
    frames, metadata = _video(seconds=3)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, videos=[frames], video_metadata=[metadata], return_tensors="pt")
    # 3 s at 2 fps: 6 of the 12 frames, 3 temporal patches of 2; 64x48 frames resize to 56x56 (Qwen2.5-VL) or
    # 64x64 (Qwen3-VL): 2x2 tokens a temporal patch.
    side = 4
    assert inputs["video_grid_thw"].tolist() == [[3, side, side]]
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == 3 * 2 * 2
    if family == "qwen3_vl":  # Qwen3-VL stamps each temporal patch with its time
        text = processor.tokenizer.decode(inputs["input_ids"][0])
        assert text.count(" seconds><|vision_start|>") == 3
    _generate(model, inputs)
