"""Training per model family (issue 17, item 4) on the tiny SmolVLM2, Qwen2.5-VL and Qwen3-VL fixtures, image rows:
prep counts each row as the collator encodes it (the family's image arithmetic), SFT takes held-out accuracy from
chance to well above it, LoRA adapts the family's towers, the merged export loads with plain transformers and gives
base + adapter's logits, a short DPO run completes, and padding-free batches have the padded batch's loss where the
family allows them: every family here, Qwen's with its 3-D multimodal rotary positions built per packed row.

    python-worker/.venv/bin/pytest python-worker/tests/test_train_families.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.families import family_of_model
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train.collator import AnswerOnlyCollator
from vlmflow_worker.train.config import SFTConfig

from .test_sft import exact_match

# One torch thread per process: the machine is small and shared; more threads only contend.
os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")

VIDEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data" / "1.mp4"
FIXTURES = {"smolvlm2": "tiny_smolvlm2_path", "qwen2_5_vl": "tiny_qwen2_5_vl_path", "qwen3_vl": "tiny_qwen3_vl_path"}


@pytest.fixture(scope="module", params=list(FIXTURES), ids=list(FIXTURES))
def family_key(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_path(family_key: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The family's tiny model; SmolVLM2's as a single-tile copy (`do_image_splitting` off: one 64-px tile, not
    five, per image), so its runs take seconds on two shared cores; the code path is the production one."""
    path = request.getfixturevalue(FIXTURES[family_key])
    if family_key != "smolvlm2":
        return path
    folder = tmp_path_factory.mktemp("models") / "tiny-smolvlm2-single-tile"
    shutil.copytree(path, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"]["do_image_splitting"] = False
    (folder / "processor_config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def workspace(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerSettings:
    root = tmp_path_factory.mktemp(f"families-{model_path.name}")
    (root / "data").mkdir()
    return WorkerSettings(port=0, artifact_root=root / "artifacts", data_roots=[root / "data", model_path.parent])


def prepare(settings: WorkerSettings, model: Path, name: str, rows: int, preference: bool = False) -> Path:
    """Synthetic shape-colour rows (chance: 1 in 4 colours) through PrepareDataset with the family's model, so every
    row carries prep's token count; 20% held out."""
    from vlmflow_worker.prep import job as prep

    data = generate("shape_colour", rows, 0, settings.data_roots[0] / name, preference=preference)
    request = jobs_pb2.PrepareDatasetRequest(
        job_id=f"prep-{name}",
        sources=[jobs_pb2.DatasetSource(uri=str(data))],
        model=common_pb2.ModelRef(model_id=str(model)),
        eval_fraction=0.2,
        seed=1,
    )
    prep.validate(request, settings)
    folder = settings.artifact_root / "jobs" / request.job_id
    folder.mkdir(parents=True)
    ctx = JobContext(request.job_id, folder, settings)
    return Path(prep.run(request, ctx).artifacts["dataset"])


def rows_of(dataset: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (dataset / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shapes(workspace: WorkerSettings, model_path: Path) -> Path:
    return prepare(workspace, model_path, "shapes", 200)


def sft_config(model: Path, dataset: Path, output: Path, **overrides: Any) -> SFTConfig:
    values: dict[str, Any] = dict(
        model_id=str(model),
        dataset_dir=str(dataset),
        output_dir=str(output),
        dtype="float32",
        learning_rate=3e-3,
        micro_batch_size=8,
        gradient_accumulation_steps=1,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        gradient_checkpointing=False,  # toy sizes: nothing to save, and it costs a second forward
        logging_steps=1,
        save_steps=1000,
        eval_steps=0,
        seed=7,
    )
    return SFTConfig(**(values | overrides))


# Optimizer steps of the learning run. The tiny Qwen models tie their 64-wide output head to embeddings of std 0.02,
# which caps every logit near +-1.3 (loss floor ~5.6 of ln 985 = 6.9): the right colour becomes the argmax only
# slowly (200 steps: 62% held out, 400: 95%). Their steps are cheap (~10 s for 400 on one core).
SFT_STEPS = {"smolvlm2": 25, "qwen2_5_vl": 400, "qwen3_vl": 400}


@pytest.fixture(scope="module")
def trained(family_key: str, model_path: Path, shapes: Path, workspace: WorkerSettings) -> Path:
    """The adapter of an SFT run on the shapes; the learning test checks it, export merges it."""
    from vlmflow_worker.train.sft import train_sft

    output = workspace.artifact_root / "runs" / "sft"
    result = train_sft(sft_config(model_path, shapes, output, max_steps=SFT_STEPS[family_key]))
    return Path(result.artifacts["adapter"])


def images_of(dataset: Path, row: dict[str, Any]) -> list[Image.Image]:
    return [Image.open(dataset / p).convert("RGB") for p in row["images"]]


def test_prep_counts_each_row_as_the_collator_encodes_it(
    family_key: str, model_path: Path, shapes: Path, workspace: WorkerSettings, request: pytest.FixtureRequest
) -> None:
    from transformers import AutoProcessor

    datasets = {model_path: shapes}
    tiled = request.getfixturevalue(FIXTURES[family_key])
    if tiled != model_path:  # SmolVLM2 tiles photos too: prep counts those rows through the tiled processor
        datasets[tiled] = prepare(workspace, tiled, "shapes-tiled", 10)
    for model, folder in datasets.items():
        processor = AutoProcessor.from_pretrained(model)
        rows = rows_of(folder, "train")[:6]
        batch = AnswerOnlyCollator(processor, folder, 2048)(rows)
        assert batch["attention_mask"].sum(dim=1).tolist() == [row["num_tokens"] for row in rows]

        # The family's own image arithmetic, from the processor's outputs: Qwen's image costs its patch grid over
        # the merge (t * h * w / merge**2 tokens), SmolVLM's every tile (image_seq_len tokens each).
        image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        image_tokens = (batch["input_ids"] == image_token).sum(dim=1)
        if "image_grid_thw" in batch:
            merge = processor.image_processor.merge_size
            assert image_tokens.tolist() == (batch["image_grid_thw"].prod(dim=1) // merge**2).tolist()
        else:
            tiles = batch["pixel_attention_mask"].flatten(2).any(dim=2).sum(dim=1)
            assert image_tokens.tolist() == (tiles * processor.image_seq_len).tolist()
            assert int(tiles.max()) == (1 if model == model_path else 5)  # 64-px photos: 4 tiles + the whole
        assert int(image_tokens.min()) > 0


def test_a_batch_mixing_a_video_row_with_photo_rows_has_each_rows_own_encoding(
    family_key: str, shapes: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A row with a native video (prep's `videos`, tests/test_video_families.py) batched with photo rows: every row as
    long as it is alone (prep's count), the video through the family's video input, the photos through its image
    input, each row with its answer's labels."""
    from transformers import AutoProcessor

    from vlmflow_worker import media

    processor = AutoProcessor.from_pretrained(request.getfixturevalue(FIXTURES[family_key]))  # SmolVLM2 tiled
    sampled = media.sample_video(VIDEO, num_frames=4)
    paths = []
    for i, frame in enumerate(sampled.frames):
        frame.save(tmp_path / f"frame-{i}.png")
        paths.append(str(tmp_path / f"frame-{i}.png"))  # absolute: the collator joins it to the dataset folder as is
    rows = rows_of(shapes, "train")[:3]
    rows[1] = {
        "id": "video-row",
        "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A baby plays."}]},
        ],
        "images": [],
        "videos": [{"frames": paths, "timestamps": sampled.timestamps, "duration": sampled.duration}],
    }
    collator = AnswerOnlyCollator(processor, shapes, 2048)
    batch = collator(rows)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths == [collator.count(row) for row in rows]
    assert (batch["labels"] != -100).sum(dim=1).min() > 0
    if "pixel_attention_mask" in batch:  # SmolVLM2: the video's 4 frames are one tile each, the photos five tiles
        tiles = batch["pixel_attention_mask"].flatten(2).any(dim=2).sum(dim=1).tolist()
        assert tiles == [5, 4, 5]
    else:  # Qwen-VL: the photos' patches and the video's, each with its grid
        assert batch["image_grid_thw"].shape[0] == 2 and batch["video_grid_thw"].shape[0] == 1
        assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape


def test_sft_takes_held_out_accuracy_from_chance_to_well_above(
    family_key: str, model_path: Path, shapes: Path, trained: Path
) -> None:
    log = [json.loads(line) for line in (trained.parent / "training_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == SFT_STEPS[family_key] and losses[-1] < losses[0]
    base, tuned = exact_match(model_path, "", shapes), exact_match(model_path, str(trained), shapes)
    assert base <= 0.3, base  # the random model does not even name a colour
    assert tuned >= 0.6, tuned  # 4 colours: chance is 0.25


@pytest.mark.parametrize("tune_vision", [False, True], ids=["text", "text+vision"])
def test_lora_adapts_the_familys_text_tower_and_with_tune_vision_its_vision_tower(
    model_path: Path, tune_vision: bool
) -> None:
    from vlmflow_worker.models import ModelSpec, load_model
    from vlmflow_worker.train.sft import add_adapters

    family = family_of_model(model_path)
    model, _ = load_model(ModelSpec(str(model_path), dtype="float32"), device="cpu")
    config = SFTConfig(model_id=str(model_path), tune_vision=tune_vision)
    adapted = {name.split(".lora_")[0] for name, p in add_adapters(model, config).named_parameters() if p.requires_grad}
    assert adapted and all(".lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    text = {name for name in adapted if re.search(rf"{family.text_tower}\.", name)}
    vision = {name for name in adapted if re.search(rf"{family.vision_tower}\.", name)}
    assert adapted == text | vision  # nothing else: no projector, merger or output head
    assert {name.rsplit(".", 1)[-1] for name in text} == set(family.text_targets)
    layers = model.config.get_text_config().num_hidden_layers
    assert len(text) == layers * len(family.text_targets)  # every projection of every layer
    if tune_vision:
        assert {name.rsplit(".", 1)[-1] for name in vision} == set(family.vision_targets)
    else:
        assert not vision


def test_text_only_lora_keeps_the_frozen_vision_tower_out_of_backward(model_path: Path) -> None:
    """Checkpointing hooks every sub-model's input embeddings to require grad; the vision tower's go, so a text-only
    LoRA step does not backpropagate through the frozen vision tower (train/sft.py frozen_vision_out_of_backward)."""
    from vlmflow_worker.models import ModelSpec, load_model
    from vlmflow_worker.train.sft import frozen_vision_out_of_backward

    model, _ = load_model(ModelSpec(str(model_path), dtype="float32"), device="cpu")
    model.enable_input_require_grads()
    frozen_vision_out_of_backward(model)
    hooked = [
        name
        for name, module in model.named_modules()
        for hook in getattr(module, "_forward_hooks", {}).values()
        if getattr(hook, "__name__", "").startswith("make_inputs_require_grad")
    ]
    family = family_of_model(model_path)
    assert hooked and all(re.search(rf"{family.text_tower}\.", name) for name in hooked), hooked


def test_export_loads_with_plain_transformers_and_gives_base_plus_adapters_logits(
    model_path: Path, shapes: Path, trained: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmflow_worker import export
    from vlmflow_worker.models import ModelSpec

    out = export.export(ModelSpec(str(model_path), adapter=str(trained), dtype="float32"), tmp_path / "merged", {})
    merged = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(trained)).eval()

    processor = AutoProcessor.from_pretrained(out)
    rows = rows_of(shapes, "eval")[:3]
    texts = [processor.apply_chat_template(row["messages"], tokenize=False) for row in rows]
    inputs = processor(text=texts, images=[images_of(shapes, r) for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = tuned(**inputs).logits, merged(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_short_dpo_run_completes_with_trls_vision_preference_collator(
    model_path: Path, workspace: WorkerSettings
) -> None:
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlmflow_worker.train import dpo

    dataset = prepare(workspace, model_path, "shapes-pref", 20, preference=True)
    # Prep counts a preference row as its longer answer after the prompt, as TRL's collator encodes it.
    rows = rows_of(dataset, "train")[:4]
    examples = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows]
    for example, row in zip(examples, rows, strict=True):
        example["images"] = images_of(dataset, row)
    batch = DataCollatorForVisionPreference(AutoProcessor.from_pretrained(model_path), max_length=None)(examples)
    lengths = batch["attention_mask"].sum(dim=1).view(2, len(rows)).max(dim=0).values  # chosen rows, then rejected
    assert lengths.tolist() == [row["num_tokens"] for row in rows]

    output = workspace.artifact_root / "runs" / "dpo"
    base = sft_config(model_path, dataset, output, max_steps=3, micro_batch_size=4, learning_rate=2e-3)
    config = dpo.DPOTrainConfig(**vars(base), beta=0.1)
    result = dpo.train_dpo(config)
    assert result.metrics["global_step"] == 3
    log = [json.loads(line) for line in Path(result.artifacts["training_log"]).read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (Path(result.artifacts["adapter"]) / "adapter_model.safetensors").is_file()


def test_a_short_grpo_run_from_an_sft_adapter_completes_with_rewards(
    model_path: Path, shapes: Path, workspace: WorkerSettings
) -> None:
    """GRPO's sampling and loss through the family's processor (Qwen's flat patches and grid sizes travel with each
    completion): 2 prompts x 4 completions a step, the KL reference being the frozen SFT adapter."""
    from vlmflow_worker.train import grpo
    from vlmflow_worker.train.rewards import RewardSpec
    from vlmflow_worker.train.sft import train_sft

    sft = train_sft(sft_config(model_path, shapes, workspace.artifact_root / "runs" / "grpo-sft", max_steps=2))
    base = sft_config(model_path, shapes, workspace.artifact_root / "runs" / "grpo", max_steps=3, learning_rate=2e-4)
    config = grpo.GRPOTrainConfig(
        **vars(base), adapter_dir=sft.artifacts["adapter"], num_generations=4, max_completion_length=3,
        beta=0.04, rewards=[RewardSpec("exact_match"), RewardSpec("anls", weight=0)],
    )  # fmt: skip
    result = grpo.train_grpo(config)
    assert result.metrics["global_step"] == 3
    log = [json.loads(line) for line in Path(result.artifacts["training_log"]).read_text().splitlines()]
    steps = [entry for entry in log if "reward" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    for entry in steps:
        assert 0 <= entry["rewards/exact_match/mean"] <= entry["rewards/anls/mean"] <= 1
        assert entry["reward"] == entry["rewards/exact_match/mean"] and entry["kl"] >= 0
        assert 1 <= entry["completions/mean_length"] <= 3
    assert (Path(result.artifacts["adapter"]) / "adapter_model.safetensors").is_file()


def test_a_packed_batch_has_the_padded_batchs_loss_and_logits(
    family_key: str, shapes: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from vlmflow_worker.models import ModelSpec, load_model
    from vlmflow_worker.train.sft import rope_index_of

    # The tiled model (not the single-tile copy): images of other aspect ratios get other numbers of tiles (other
    # patch grids for Qwen), so the rows differ in length and in image size.
    tiled = request.getfixturevalue(FIXTURES[family_key])
    torch.set_num_threads(1)
    model, processor = load_model(ModelSpec(str(tiled), dtype="float32"), device="cpu")
    rows = rows_of(shapes, "train")[:4]
    for row, size in zip(rows, [(64, 22), (32, 64), (64, 64), (112, 40)], strict=True):
        path = tmp_path / row["images"][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shapes / row["images"][0]).resize(size).save(path)
    padded = AnswerOnlyCollator(processor, tmp_path, 2048)(rows)
    packed = AnswerOnlyCollator(processor, tmp_path, 2048, packing=True, rope_index=rope_index_of(model))(rows)
    lengths = padded["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "the rows should differ in length, or padding is not exercised"
    assert packed["input_ids"].shape == (1, int(lengths.sum())) and "attention_mask" not in packed
    if "mm_token_type_ids" in padded:  # Qwen: the 1-D row starts over each row's 3-D multimodal positions
        assert packed["position_ids"].shape == (4, 1, int(lengths.sum()))
    with torch.no_grad():  # no KV cache, as in training: with one, transformers ignores the packed position_ids
        out_padded = model(**padded, use_cache=False)
        out_packed = model(**packed, use_cache=False)
    torch.testing.assert_close(out_packed.loss, out_padded.loss, rtol=1e-5, atol=1e-5)
    real = padded["attention_mask"].bool()
    torch.testing.assert_close(out_packed.logits[0], out_padded.logits[real], rtol=1e-4, atol=1e-4)


def test_a_packed_training_run_follows_the_padded_loss_curve(model_path: Path, shapes: Path, tmp_path: Path) -> None:
    from vlmflow_worker.train.sft import train_sft

    def losses(packing: bool) -> list[float]:
        output = tmp_path / f"packing-{packing}"
        config = sft_config(model_path, shapes, output, max_steps=3, micro_batch_size=4, packing=packing)
        train_sft(dataclasses.replace(config, lora_dropout=0.0))  # dropout draws differ between the layouts
        log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
        return [entry["loss"] for entry in log if "loss" in entry]

    padded, packed = losses(False), losses(True)
    assert len(padded) == 3
    assert packed == pytest.approx(padded, rel=1e-3)


def evaluate_report(settings: WorkerSettings, model: Path, dataset: Path, adapter: Path, name: str) -> dict[str, Any]:
    """The Evaluate job on the dataset's held-out split: the base and the adapter ("sft"), their metrics."""
    from vlmflow_worker.evaluate import job as evaluate

    request = jobs_pb2.EvaluateRequest(
        job_id=name,
        model=common_pb2.ModelRef(model_id=str(model), dtype=common_pb2.DTYPE_FLOAT32),
        variants=[jobs_pb2.EvalVariant(name="sft", adapter_uri=str(adapter))],
        dataset_uri=str(dataset),
        generation=common_pb2.GenerationConfig(max_new_tokens=4),
        batch_size=8,
        bootstrap_samples=100,
        output_uri=str(settings.artifact_root / "reports" / name),
    )
    evaluate.validate(request, settings)
    folder = settings.artifact_root / "jobs" / name
    folder.mkdir(parents=True)
    result = evaluate.run(request, JobContext(name, folder, settings))
    return json.loads(Path(result.artifacts["metrics"]).read_text())["metrics"]


def test_evaluate_scores_the_tuned_model_above_the_base(
    model_path: Path, shapes: Path, trained: Path, workspace: WorkerSettings
) -> None:
    metrics = evaluate_report(workspace, model_path, shapes, trained, "eval-sft")
    assert metrics["base"]["vqa_accuracy"]["value"] <= 0.3
    assert metrics["sft"]["vqa_accuracy"]["value"] >= 0.6  # the learning test's bar, through Generate's batching


def test_evaluate_scores_preference_rows_by_the_answers_log_probabilities(
    model_path: Path, trained: Path, workspace: WorkerSettings
) -> None:
    dataset = prepare(workspace, model_path, "shapes-pref-eval", 10, preference=True)
    metrics = evaluate_report(workspace, model_path, dataset, trained, "eval-pref")
    assert metrics["base"]["preference_accuracy"]["value"] == 0.5 and metrics["base"]["reward_margin"]["value"] == 0
    assert metrics["sft"]["reward_margin"]["value"] > 0  # SFT on the right colours prefers the chosen answers


def test_checkpointing_keeps_the_loss_curve_and_tune_vision_trains_the_vision_tower(
    model_path: Path, shapes: Path, tmp_path: Path
) -> None:
    """The production default (gradient checkpointing on, the frozen vision tower out of backward) trains exactly as
    without it; with tune_vision the vision adapters get gradients and change the curve."""
    from vlmflow_worker.train.sft import train_sft

    def losses(checkpointing: bool, tune_vision: bool) -> list[float]:
        output = tmp_path / f"run-{checkpointing}-{tune_vision}"
        config = sft_config(model_path, shapes, output, max_steps=3, micro_batch_size=4, tune_vision=tune_vision)
        train_sft(dataclasses.replace(config, lora_dropout=0.0, gradient_checkpointing=checkpointing))
        log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
        return [entry["loss"] for entry in log if "loss" in entry]

    text, vision = losses(False, False), losses(False, True)
    assert losses(True, False) == pytest.approx(text, rel=1e-5)
    assert losses(True, True) == pytest.approx(vision, rel=1e-5)
    assert vision[0] == pytest.approx(text[0], rel=1e-6) and vision[-1] != pytest.approx(text[-1], rel=1e-4)
