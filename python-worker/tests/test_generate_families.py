"""Generate on the tiny SmolVLM2, Qwen2.5-VL and Qwen3-VL fixtures, the family read from the model: each task preset
answers, prompts cost what the family's processor makes of the same inputs, a video goes in through the family's own
video input (Qwen's <|video_pad|> tokens with its frame times, SmolVLM2's timestamped frames), greedy answers are the
same batched (left padded) as alone, and the Python CLI needs nothing but the model folder."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests import test_generate
from tests.test_generate import DATA, photo
from tests.test_generate_batching import submission, submit_together
from vlmflow.v1 import common_pb2, generate_pb2, worker_pb2
from vlmflow_worker import media
from vlmflow_worker.errors import BadData
from vlmflow_worker.infer import prompts
from vlmflow_worker.infer.batch_queue import BatchQueue
from vlmflow_worker.infer.cli import main
from vlmflow_worker.infer.generate import collate, encode, eos_token_ids, pad_token_id, prepare_item, run_generate
from vlmflow_worker.models import ModelCache, ModelSpec
from vlmflow_worker.serve.settings import WorkerSettings

Item = generate_pb2.GenerateItem
# test_generate.py's worker settings (the demo data as a root) and model cache, shared rather than copied.
settings = test_generate.settings
cache = test_generate.cache

FAMILIES = ["smolvlm2", "qwen2_5_vl", "qwen3_vl"]
VIDEO_FRAMES = 4


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"tiny_{request.param}_path")


def items() -> list[Item]:
    return [
        Item(id="caption", task=generate_pb2.TASK_CAPTION, images=[photo("1.jpg")]),
        Item(id="vqa", task=generate_pb2.TASK_VQA, prompt="Who is he?", images=[photo("2.jpg")]),
        Item(id="ocr", task=generate_pb2.TASK_OCR, images=[common_pb2.Image(data=(DATA / "3.jpg").read_bytes())]),
        Item(
            id="multi",
            task=generate_pb2.TASK_MULTI_IMAGE,
            prompt="Same place?",
            images=[photo("1.jpg"), photo("3.jpg")],
        ),
        Item(
            id="video",
            task=generate_pb2.TASK_VIDEO,
            prompt="What happens?",
            video=common_pb2.Video(uri=str(DATA / "1.mp4"), num_frames=VIDEO_FRAMES),
        ),
        Item(id="text-only", prompt="Say hello."),
    ]


def run(path: Path, settings: WorkerSettings, cache: ModelCache, *request_items: Item, **generation: Any):
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(path)),
        items=request_items,
        generation=common_pb2.GenerationConfig(**{"max_new_tokens": 6, **generation}),
    )
    # At least one new token: a random tiny model may end at once, and these tests want an answer to compare.
    return run_generate(request, settings, cache, extra_generate_kwargs={"min_new_tokens": 1})


def processor_prompt_tokens(processor, item: Item) -> int:
    """The prompt's length as the family's processor makes it from the same inputs, without Generate's code: the
    chat template's rendering and the images (per row) or the sampled video (with its frame times)."""
    name = item.id
    if name == "video":
        sampled = media.sample_video(DATA / "1.mp4", num_frames=VIDEO_FRAMES)
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": item.prompt}]}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(text=[text], return_tensors="pt", **video_inputs(sampled))
        return len(inputs["input_ids"][0])
    images = [Image.open(io.BytesIO(image.data) if image.data else image.uri).convert("RGB") for image in item.images]
    prompt = {"caption": prompts.CAPTION_PROMPT, "ocr": prompts.OCR_PROMPT}.get(name, item.prompt)
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=[text], images=[images] if images else None, return_tensors="pt")
    return len(inputs["input_ids"][0])


def video_inputs(sampled: media.VideoFrames) -> dict[str, Any]:
    """A sampled video as a processor's `videos` input: frames (T, H, W, 3), their rate and their times."""
    from transformers.video_utils import VideoMetadata

    times = sampled.timestamps
    fps = (len(times) - 1) / (times[-1] - times[0])
    frames = np.stack([np.asarray(frame) for frame in sampled.frames])
    metadata = VideoMetadata(
        total_num_frames=len(times),
        fps=fps,
        duration=sampled.duration,
        frames_indices=[t * fps for t in times],
        height=frames.shape[1],
        width=frames.shape[2],
    )
    return {"videos": [[frames]], "video_metadata": [metadata], "do_sample_frames": False}


def test_each_task_answers_with_the_prompt_the_processor_makes(family, settings, cache) -> None:
    name, path = family
    response = run(path, settings, cache, *items())
    processor = cache.get(ModelSpec(str(path)))[0].processor
    by_id = {r.id: r for r in response.results}
    assert list(by_id) == [i.id for i in items()]
    for item in items():
        result = by_id[item.id]
        # The text may be empty: a random model's tokens can all be special ones, which decoding skips.
        assert result.answer_tokens >= 1, (name, item.id)
        assert result.prompt_tokens == processor_prompt_tokens(processor, item), (name, item.id)
    assert by_id["multi"].prompt_tokens > by_id["vqa"].prompt_tokens > by_id["text-only"].prompt_tokens
    sampled = media.sample_video(DATA / "1.mp4", num_frames=VIDEO_FRAMES)
    assert list(by_id["video"].frame_timestamps) == pytest.approx(sampled.timestamps)


def test_a_video_goes_in_through_the_familys_own_video_input(family, settings, cache) -> None:
    name, path = family
    processor = cache.get(ModelSpec(str(path)))[0].processor
    video_item = items()[4]
    prepared = prepare_item(video_item, 0, settings)
    encoded = encode(processor, prepared)
    ids = encoded["input_ids"][0]
    text = processor.tokenizer.decode(ids)
    times = prepared.frame_timestamps
    assert len(times) == VIDEO_FRAMES
    if name == "smolvlm2":
        # SmolVLM2's processor writes its own video prompt: the frame count in words, each frame at its time, one
        # tile each.
        assert "You are provided the following series of four frames from a 0:00:09 [H:MM:SS] video." in text
        for t in times:
            assert f"Frame from {int(t) // 60:02d}:{int(t) % 60:02d}:" in text
        assert encoded["pixel_values"].shape[:2] == (1, VIDEO_FRAMES)
        image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
        assert int((ids == image_token).sum()) == VIDEO_FRAMES * processor.image_seq_len
        return
    # Qwen-VL: video tokens, none of the image's; frames in pairs (temporal patches).
    grid = encoded["video_grid_thw"]
    merge = processor.video_processor.merge_size
    assert grid[0, 0] == VIDEO_FRAMES // 2
    assert int((ids == processor.video_token_id).sum()) == int(grid.prod()) // merge**2 > 0
    assert int((ids == processor.image_token_id).sum()) == 0
    assert "pixel_values" not in encoded and "pixel_values_videos" in encoded
    if name == "qwen2_5_vl":
        # Seconds per temporal patch, from the sampled frames' rate: the rotary time axis.
        fps = (len(times) - 1) / (times[-1] - times[0])
        assert encoded["second_per_grid_ts"].tolist() == pytest.approx([2 / fps])
    else:
        # Qwen3-VL stamps each temporal patch with the mean time of its two frames.
        for first, second in zip(times[::2], times[1::2], strict=True):
            assert f"<{(first + second) / 2:.1f} seconds>" in text


def test_a_one_frame_video_is_shown_twice_to_qwen(family, settings, cache) -> None:
    name, path = family
    item = Item(
        id="one",
        task=generate_pb2.TASK_VIDEO,
        video=common_pb2.Video(uri=str(DATA / "3.mp4"), num_frames=1),
    )
    result = run(path, settings, cache, item).results[0]
    assert len(result.frame_timestamps) == 1 and result.answer_tokens >= 1
    if name != "smolvlm2":
        processor = cache.get(ModelSpec(str(path)))[0].processor
        encoded = encode(processor, prepare_item(item, 0, settings))
        assert encoded["video_grid_thw"][0, 0] == 1  # one temporal patch: the frame and its copy


def test_greedy_answers_are_the_same_batched_and_alone(family, settings, cache) -> None:
    """Left padding (with Qwen's rotary positions computed from the attention mask) and the batch's concatenated
    or zero-padded images must not change what an item gets."""
    name, path = family
    batch = [items()[i] for i in (0, 1, 3, 4, 5)]
    together = run(path, settings, cache, *batch, max_new_tokens=8).results
    alone = [run(path, settings, cache, item, max_new_tokens=8).results[0] for item in batch]
    for a, b in zip(together, alone, strict=True):
        assert (a.text, a.answer_tokens, a.prompt_tokens) == (b.text, b.answer_tokens, b.prompt_tokens), (name, a.id)


def test_logits_are_the_same_batched_and_alone(family, settings, cache) -> None:
    """The tiny Qwen models answer every prompt with the same token, so equal answers alone prove little there: the
    logits of each step must match too (the prompt's last token, then each new one with the cached keys), which they
    would not if a padded row's rotary positions, attention or images were off."""
    name, path = family
    entry, _ = cache.get(ModelSpec(str(path)))
    model, processor = entry.model, entry.processor
    batch = [items()[i] for i in (0, 1, 3, 4, 5)]
    encodings = [encode(processor, prepare_item(item, i, settings)) for i, item in enumerate(batch)]
    pad, eos = pad_token_id(processor), eos_token_ids(model, processor)

    def logits(rows: list[dict[str, Any]]) -> torch.Tensor:
        inputs = collate(rows, pad)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=3,
                min_new_tokens=3,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
                output_logits=True,
                return_dict_in_generate=True,
            )
        return torch.stack(out.logits, dim=1)  # [rows, steps, vocabulary]

    together = logits(encodings)
    for row, encoding in enumerate(encodings):
        torch.testing.assert_close(together[row], logits([encoding])[0], atol=1e-4, rtol=1e-4, msg=f"{name} {row}")


def test_the_servers_queue_merges_two_requests_into_one_call(family, settings, cache) -> None:
    """The server's path (batch_queue.py): two requests' items in one generate() call, each answered as alone."""
    name, path = family
    a, b = items()[:2], items()[3:5]
    one_by_one = BatchQueue(cache, wait_s=0)
    try:
        alone = [
            one_by_one.submit(submission(path, settings, cache, [item])).result(120).generated[0].tokens
            for item in a + b
        ]
    finally:
        one_by_one.close(wait_s=60)
    queue = BatchQueue(cache, wait_s=30)
    try:
        first, second = submit_together(queue, *(submission(path, settings, cache, request) for request in (a, b)))
        together = first.result(120).generated + second.result(120).generated
    finally:
        queue.close(wait_s=60)
    assert queue.generate_calls == 1
    assert [g.tokens for g in together] == alone, name


def test_an_image_the_processor_refuses_is_an_error_naming_the_item(tiny_qwen3_vl_path: Path, settings, cache) -> None:
    strip = io.BytesIO()
    Image.new("RGB", (500, 2), "red").save(strip, format="PNG")
    item = Item(id="strip", task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(data=strip.getvalue())])
    with pytest.raises(BadData, match=r"items\[1\] \(strip\): the model's processor cannot take .*aspect ratio"):
        run(tiny_qwen3_vl_path, settings, cache, items()[0], item)


def test_the_python_cli_takes_the_family_from_the_model_folder(
    tiny_qwen2_5_vl_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--model", str(tiny_qwen2_5_vl_path), "--max-new-tokens", "3", "--json"]
    assert main([*argv, "--image", str(DATA / "1.jpg"), "--prompt", "Who is he?"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["prompt_tokens"] > 0
    assert main([*argv, "--video", str(DATA / "3.mp4"), "--num-frames", "2", "--prompt", "What happens?"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"][0]["frame_timestamps"]) == 2
