"""A video row from prep to the training batch: prep samples it with Generate's sampler (so it never holds the whole
video), and training encodes its frames exactly as Generate does (one tile per frame), with photos still tiled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmflow_worker import media
from vlmflow_worker.encoding import encode_by_image, encode_row
from vlmflow_worker.infer import prompts
from vlmflow_worker.infer.generate import PreparedItem, encode
from vlmflow_worker.prep import media as prep_media
from vlmflow_worker.prep.media import MediaStore
from vlmflow_worker.prep.rows import Normalizer
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train.collator import AnswerOnlyCollator

VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data"


@pytest.fixture(scope="module")
def processor(tiny_model_path: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_path)


@pytest.fixture
def normalizer(tmp_path: Path) -> Normalizer:
    if not VIDEOS.is_dir():
        pytest.fail(f"the shared demo videos are missing (../shared sits beside the clone) at {VIDEOS}")
    settings = WorkerSettings(
        host="127.0.0.1", port=0, artifact_root=tmp_path, data_roots=[VIDEOS, tmp_path], job_capacity=1
    )
    return Normalizer(MediaStore(tmp_path, settings))


def video_record(text: str = "<video>What happens?") -> dict:
    return {
        "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "A baby plays."}],
        "videos": [str(VIDEOS / "1.mp4")],
    }


def test_prep_samples_a_video_with_generates_sampler_and_defaults(normalizer: Normalizer, monkeypatch) -> None:
    calls: list[dict] = []

    def spy(path: Path, **kwargs) -> media.VideoFrames:
        calls.append(kwargs)
        return media.sample_video(path, **kwargs)

    monkeypatch.setattr(prep_media, "sample_video", spy)
    row = normalizer.row(video_record(), 0, None, {})
    # Generate's defaults: no frame count, fps or size of prep's own (only the name for errors).
    assert calls == [{"what": f"video {str(VIDEOS / '1.mp4')!r}"}]
    expected = media.sample_video(VIDEOS / "1.mp4")
    assert len(row.images) == len(row.data["images"]) == media.DEFAULT_NUM_FRAMES
    assert row.data["video_frames"] == list(range(media.DEFAULT_NUM_FRAMES)) == row.frames
    assert [image.size for image in row.images] == [frame.size for frame in expected.frames]
    # The frames are introduced by their times, as in Generate's video prompt.
    texts = [p["text"] for p in row.data["messages"][0]["content"] if p["type"] == "text"]
    assert texts[:-1] == [p["text"] for p in prompts.video_parts(expected.timestamps, expected.duration) if "text" in p]


def test_an_unreadable_video_drops_the_row(normalizer: Normalizer, tmp_path: Path) -> None:
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"\x00\x01 not a video " * 100)
    record = video_record() | {"videos": [str(junk)]}
    with pytest.raises(prep_media.Drop) as dropped:
        normalizer.row(record, 0, None, {})
    assert dropped.value.reason == "corrupt_image" and "clip.mp4" in dropped.value.detail


def test_a_video_row_trains_on_the_tiles_and_tokens_generate_shows(
    normalizer: Normalizer, processor, tmp_path: Path
) -> None:
    row = normalizer.row(video_record(), 0, None, {})
    frames = len(row.images)
    batch = AnswerOnlyCollator(processor, tmp_path, max_length=4096)([row.data])

    # Generate's encoding of the same frames (a video item: every image a frame).
    sampled = media.sample_video(VIDEOS / "1.mp4")
    served = encode(
        processor,
        PreparedItem(
            "v",
            prompts.video_conversation("What happens?", sampled.timestamps, 0),
            sampled.frames,
            list(range(len(sampled.frames))),
        ),
    )
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert batch["pixel_values"].shape[1] == served["pixel_values"].shape[1] == frames  # one tile per frame
    assert int((batch["input_ids"] == image_token).sum()) == int((served["input_ids"] == image_token).sum())
    # Tiled like a photo, the same frames would have cost several tiles each: the check above means something.
    tiled = processor(text=["<image>"], images=[[row.images[0]]], return_tensors="pt")
    assert tiled["pixel_values"].shape[1] > 1

    # Prep's count is the length the collator trains on.
    from vlmflow_worker.prep.job import TokenCounter

    counter = TokenCounter.__new__(TokenCounter)
    counter.processor = processor
    assert counter.count(row) == int(batch["attention_mask"].sum())


def test_a_row_with_a_photo_and_a_video_tiles_the_photo_only(normalizer: Normalizer, processor, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (120, 60), "red").save(photo)
    record = video_record("<image>Compare with <video>") | {"images": [str(photo)]}
    settings = WorkerSettings(
        host="127.0.0.1", port=0, artifact_root=tmp_path, data_roots=[VIDEOS, tmp_path], job_capacity=1
    )
    row = Normalizer(MediaStore(tmp_path, settings)).row(record, 0, None, {})
    assert row.data["video_frames"] == list(range(1, 1 + media.DEFAULT_NUM_FRAMES))
    text = processor.apply_chat_template(row.data["messages"], tokenize=False)
    mixed = encode_row(processor, text, row.images, row.frames)
    photo_tiles = processor(text=["<image>"], images=[[row.images[0]]], return_tensors="pt")["pixel_values"].shape[1]
    assert mixed["pixel_values"].shape[1] == photo_tiles + media.DEFAULT_NUM_FRAMES
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    per_tile = processor.image_seq_len
    assert int((mixed["input_ids"] == image_token).sum()) == per_tile * (photo_tiles + media.DEFAULT_NUM_FRAMES)

    # The per-image path reproduces the processor's own encoding where the processor can do it in one call.
    for images, frames in ((row.images[1:3], [0, 1]), ([row.images[0], row.images[0]], [])):
        one_call = encode_row(processor, "<image>a<image>b", images, frames)
        for key in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"):
            assert torch.equal(encode_by_image(processor, "<image>a<image>b", images, frames)[key], one_call[key])

    # Batched with a photo-only row: padded as the processor pads (zero tiles, padded ids), labels on the answers.
    photo_row = {"messages": [{"role": "user", "content": [{"type": "image"}]}, *row.data["messages"][1:]]}
    batch = AnswerOnlyCollator(processor, tmp_path, max_length=8192)(
        [row.data, photo_row | {"images": [row.data["images"][0]]}]
    )
    assert batch["pixel_values"].shape[:2] == (2, photo_tiles + media.DEFAULT_NUM_FRAMES)
    assert not batch["pixel_values"][1, photo_tiles:].any()  # the short row's padding tiles are all zero
    assert (batch["labels"] != -100).sum(dim=1).tolist() == [(batch["labels"][0] != -100).sum().item()] * 2
