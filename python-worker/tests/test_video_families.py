"""Native video rows in prep and training (issue 17) for the families whose processor takes videos: SmolVLM2,
Qwen2.5-VL and Qwen3-VL, on their tiny fixtures. Prep samples a row's video with Generate's sampler and keeps it a
video; it counts the row with the family's video arithmetic, and that count is the collator's length; the collator
feeds the processor's video input exactly the tensors Generate feeds it for the same video; the loss is on the
answers only; a padding-free batch of video rows has the padded batch's loss; SFT on video rows runs and resumes;
an over-length video row is refused in prep, naming the row.

    python-worker/.venv/bin/pytest python-worker/tests/test_video_families.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker import media
from vlmflow_worker.errors import BadData
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train.collator import IGNORE, AnswerOnlyCollator

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")

VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data"
FIXTURES = {"smolvlm2": "tiny_smolvlm2_path", "qwen2_5_vl": "tiny_qwen2_5_vl_path", "qwen3_vl": "tiny_qwen3_vl_path"}
END_OF_TURN = {"smolvlm2": "<end_of_utterance>", "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>"}
ANSWERS = ["A baby plays with a toy.", "It laughs.\nAssistant: twice."]


@pytest.fixture(scope="module", params=list(FIXTURES), ids=list(FIXTURES))
def family_key(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_path(family_key: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(FIXTURES[family_key])


@pytest.fixture(scope="module")
def processor(model_path: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_path)


@pytest.fixture(scope="module")
def settings(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerSettings:
    if not VIDEOS.is_dir():
        pytest.fail(f"the shared demo videos are missing (../shared sits beside the clone) at {VIDEOS}")
    root = tmp_path_factory.mktemp(f"video-{model_path.name}")
    return WorkerSettings(port=0, artifact_root=root / "artifacts", data_roots=[VIDEOS, model_path.parent, root])


def video_records(count: int) -> list[dict[str, Any]]:
    """Multi-turn rows, each about one of the demo videos (two MP4s and an AVI, of other sizes and lengths)."""
    names = ["1.mp4", "3.mp4", "2.avi"]
    return [
        {
            "messages": [
                {"role": "user", "content": "<video>What happens?"},
                {"role": "assistant", "content": ANSWERS[0]},
                {"role": "user", "content": "And then?" + " Really?" * i},  # rows of other lengths
                {"role": "assistant", "content": ANSWERS[1]},
            ],
            "videos": [str(VIDEOS / names[i % len(names)])],
        }
        for i in range(count)
    ]


def prepare(settings: WorkerSettings, model: Path, name: str, rows: int, **request: Any) -> Path:
    from vlmflow_worker.prep import job as prep

    source = settings.data_roots[2] / f"{name}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in video_records(rows)))
    message = jobs_pb2.PrepareDatasetRequest(
        job_id=f"prep-{name}",
        sources=[jobs_pb2.DatasetSource(uri=str(source))],
        model=common_pb2.ModelRef(model_id=str(model)),
        eval_fraction=0.0,
        **request,
    )
    prep.validate(message, settings)
    folder = settings.artifact_root / "jobs" / message.job_id
    folder.mkdir(parents=True)
    return Path(prep.run(message, JobContext(message.job_id, folder, settings)).artifacts["dataset"])


@pytest.fixture(scope="module")
def videos(settings: WorkerSettings, model_path: Path) -> Path:
    return prepare(settings, model_path, "videos", 6)


def rows_of(dataset: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]


def test_prep_keeps_the_video_and_counts_it_as_the_collator_encodes_it(
    family_key: str, processor, videos: Path
) -> None:
    rows = rows_of(videos)
    assert all("video_frames" not in row and len(row["videos"]) == 1 for row in rows)
    assert all(row["images"] == [] for row in rows)  # the frames are the video's, not photos
    video_part = rows[0]["messages"][0]["content"][0]
    assert video_part == {"type": "video"}

    batch = AnswerOnlyCollator(processor, videos, 1 << 16)(rows)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths == [row["num_tokens"] for row in rows]
    assert len(set(lengths)) > 1  # the batch is padded, and the counts still hold

    # The family's own video arithmetic, from the processor's outputs.
    if family_key == "smolvlm2":  # every frame one tile of image_seq_len <image> tokens, frames from 00:0s
        image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        frames = batch["pixel_attention_mask"].flatten(2).any(dim=2).sum(dim=1)
        assert frames.tolist() == [len(row["videos"][0]["frames"]) for row in rows]
        assert (batch["input_ids"] == image_token).sum(dim=1).tolist() == (frames * processor.image_seq_len).tolist()
        assert "Frame from 00:0" in processor.tokenizer.decode(batch["input_ids"][0])
    else:  # Qwen: the video's patch grid over the merge, t * h * w / merge**2 <|video_pad|> tokens per video
        video_token = processor.tokenizer.convert_tokens_to_ids(processor.video_token)
        merge = processor.video_processor.merge_size
        expected = (batch["video_grid_thw"].prod(dim=1) // merge**2).tolist()
        assert (batch["input_ids"] == video_token).sum(dim=1).tolist() == expected
        assert "pixel_values" not in batch and "image_grid_thw" not in batch


def test_training_feeds_the_video_exactly_as_generate_serves_it(processor, videos: Path) -> None:
    from vlmflow_worker.infer.generate import PreparedItem, encode

    row = rows_of(videos)[0]
    sampled = media.sample_video(VIDEOS / "1.mp4")  # Generate's sampler with its defaults, as prep ran it
    assert row["videos"][0]["timestamps"] == sampled.timestamps
    served = encode(processor, PreparedItem("v", [], [], video=sampled, prompt="What happens?"))
    trained = AnswerOnlyCollator(processor, videos, 1 << 16)([row])
    key = "pixel_values_videos" if "pixel_values_videos" in served else "pixel_values"
    assert torch.equal(trained[key], served[key])  # the same frames, pixel for pixel (PNG is lossless)
    # And the same video tokens, with the same frame times in them.
    media_ids = [processor.tokenizer.convert_tokens_to_ids(getattr(processor, "video_token", processor.image_token))]
    media_ids.append(processor.tokenizer.convert_tokens_to_ids(processor.image_token))

    def video_tokens(ids: torch.Tensor) -> int:
        return int(torch.isin(ids, torch.tensor(media_ids)).sum())

    assert video_tokens(trained["input_ids"][0]) == video_tokens(served["input_ids"][0]) > 0
    first_turn = processor.tokenizer.decode(served["input_ids"][0]).split("What happens?")[0]
    assert processor.tokenizer.decode(trained["input_ids"][0]).startswith(first_turn)


def test_loss_tokens_of_a_multi_turn_video_row_are_the_answers_and_the_end_of_turn(
    family_key: str, processor, videos: Path
) -> None:
    rows = rows_of(videos)[:2]
    batch = AnswerOnlyCollator(processor, videos, 1 << 16)(rows)
    end = END_OF_TURN[family_key]
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = (labels != IGNORE).int().tolist()
        runs, start = [], None
        for i, flag in enumerate([*kept, 0]):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                runs.append((start, i))
                start = None
        assert len(runs) == len(ANSWERS)
        for (first, stop), answer in zip(runs, ANSWERS, strict=True):
            pieces = [processor.tokenizer.decode([t]) for t in ids[first:stop].tolist()]
            assert "".join(pieces).strip() == f"{answer}{end}", pieces
            assert pieces[-1] == end


def test_a_video_row_prepared_as_keyframes_is_refused_naming_it(processor, videos: Path) -> None:
    row = rows_of(videos)[0] | {"video_frames": [0], "id": "s0-7"}
    with pytest.raises(BadData, match=r"row s0-7 .*keyframe.*prepare the dataset with model.model_id"):
        AnswerOnlyCollator(processor, videos, 1 << 16)([row])


def test_an_over_length_video_row_is_refused_in_prep_naming_the_row(
    settings: WorkerSettings, model_path: Path, videos: Path
) -> None:
    lengths = sorted(row["num_tokens"] for row in rows_of(videos))
    # Between the shortest and the longest video row: the longer ones are over, and none may be dropped.
    with pytest.raises(BadData) as refused:
        prepare(settings, model_path, "too-long", 6, max_length=lengths[0], max_drop_fraction=0.0)
    message = refused.value.message
    assert "too_long" in message and "(images and videos included) > max_length" in message
    assert "First problem, sources[0] row " in message
    # The row it names is the first over-length row of the source.
    named = int(message.split("First problem, sources[0] row ")[1].split(":")[0])
    counts = prepared_counts(videos)
    assert named == min(row for row, n in counts.items() if n > lengths[0])


def prepared_counts(dataset: Path) -> dict[int, int]:
    """num_tokens by source row (ids s0-<row>), both splits."""
    rows = [
        json.loads(line)
        for split in ("train", "eval")
        for line in (dataset / f"{split}.jsonl").read_text().splitlines()
    ]
    return {int(r["id"].split("-")[1]): r["num_tokens"] for r in rows}


def test_sft_on_video_rows_runs_and_resumes_to_the_same_curve(model_path: Path, videos: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from vlmflow_worker.train.sft import train_sft

    from .test_train_families import sft_config

    def train(output: Path) -> list[dict[str, Any]]:
        overrides = {"learning_rate": 1e-3, "micro_batch_size": 2, "max_steps": 4, "save_steps": 2, "seed": 3}
        train_sft(sft_config(model_path, videos, output, **overrides))
        return [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]

    whole = train(tmp_path / "whole")
    losses = {e["step"]: e["loss"] for e in whole if "loss" in e}
    assert sorted(losses) == [1, 2, 3, 4] and all(v == v and v > 0 for v in losses.values())

    # Back to the checkpoint at step 2, as if killed there, and resumed.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    shutil.rmtree(resumed / "adapter")
    kept = [e for e in whole if e["step"] <= 2]
    (resumed / "training_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    log = train(resumed)
    after = {e["step"]: e["loss"] for e in log[len(kept) :] if "loss" in e}
    assert sorted(after) == [3, 4]  # resumed at step 3, nothing redone
    assert after == pytest.approx({s: losses[s] for s in (3, 4)}, rel=1e-5)
    first, second = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (tmp_path / "whole", resumed))
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-5, atol=1e-6)


def test_a_packed_batch_of_video_rows_has_the_padded_batchs_loss_and_logits(model_path: Path, videos: Path) -> None:
    """Padding-free batches of video rows: Qwen's video tokens keep their 3-D (time, row, column) rotary positions
    per packed row, SmolVLM2's frames are its images."""
    from vlmflow_worker.models import ModelSpec, load_model
    from vlmflow_worker.train.sft import rope_index_of

    torch.set_num_threads(1)
    model, processor = load_model(ModelSpec(str(model_path), dtype="float32"), device="cpu")
    rows = rows_of(videos)[:3]
    padded = AnswerOnlyCollator(processor, videos, 1 << 16)(rows)
    packed = AnswerOnlyCollator(processor, videos, 1 << 16, packing=True, rope_index=rope_index_of(model))(rows)
    lengths = padded["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1 and packed["input_ids"].shape == (1, int(lengths.sum()))
    with torch.no_grad():  # no KV cache, as in training
        out_padded = model(**padded, use_cache=False)
        out_packed = model(**packed, use_cache=False)
    torch.testing.assert_close(out_packed.loss, out_padded.loss, rtol=1e-5, atol=1e-5)
    real = padded["attention_mask"].bool()
    torch.testing.assert_close(out_packed.logits[0], out_padded.logits[real], rtol=1e-4, atol=1e-4)
