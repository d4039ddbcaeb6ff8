"""SmolVLM's real architectures (random weights, fixtures/architectures.py): the configs and processors are the
published ones, a real photo costs the image tokens the architecture's arithmetic says, and the 256M model goes
through prep -> SFT (image splitting on) -> evaluate -> export on CPU."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.fixtures.architectures import build_architecture
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.serve.settings import WorkerSettings

from .conftest import REPO_ROOT

PHOTOS = sorted((REPO_ROOT / "../shared/data/llamafactory-mllm-demo/mllm_demo_data").resolve().glob("*.jpg"))

# The published values, written out again (not read from SHAPES) so an edit of the builder's data that drifts from
# the real models fails here. Sources and what is derived: fixtures/architectures.py.
REAL: dict[str, dict[str, Any]] = {
    "smolvlm-256m": {
        "text": (576, 1536, 30, 9, 3, 49280),  # hidden, intermediate, layers, heads, KV heads, vocab
        "vision": (768, 3072, 12, 12, 512, 16),  # hidden, intermediate, layers, heads, image size, patch
        "scale_factor": 4,
        "image_token_id": 49190,
        "processor": (2048, 512, True, 64),  # longest edge, tile (max_image_size), splitting, image_seq_len
        "end_of_utterance": 49279,
        "fake_image": 49189,
    },
    "smolvlm-500m": {
        "text": (960, 2560, 32, 15, 5, 49280),
        "vision": (768, 3072, 12, 12, 512, 16),
        "scale_factor": 4,
        "image_token_id": 49190,
        "processor": (2048, 512, True, 64),
        "end_of_utterance": 49279,
        "fake_image": 49189,
    },
    "smolvlm-2.2b": {
        "text": (2048, 8192, 24, 32, 32, 49155),
        "vision": (1152, 4304, 27, 16, 384, 14),
        "scale_factor": 3,
        "image_token_id": 49153,
        "processor": (1536, 384, True, 81),
        "end_of_utterance": 49154,
        "fake_image": 49152,
    },
}


def model_folder(shape: str) -> Path:
    """<repo>/.state/models/<shape>-random, beside the tiny model; rebuilt only when the builder changed."""
    return build_architecture(shape, REPO_ROOT / ".state" / "models" / f"{shape}-random")


@pytest.fixture(scope="module")
def folders() -> dict[str, Path]:
    """A loadable folder per shape, built once per builder version into .state/models: about 10 s each for 256M and
    500M, a minute and 5 GiB of memory for the 2.2B model's 4.5 GB of bf16 (measured on this project's 2-core
    machine), then only reloaded."""
    return {shape: model_folder(shape) for shape in sorted(REAL)}


@pytest.mark.parametrize("shape", sorted(REAL))
def test_config_and_processor_are_the_published_ones(folders: dict[str, Path], shape: str) -> None:
    real = REAL[shape]
    config = AutoConfig.from_pretrained(folders[shape])
    text, vision = config.text_config, config.vision_config
    assert (
        text.hidden_size,
        text.intermediate_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.vocab_size,
    ) == real["text"]
    assert (
        vision.hidden_size,
        vision.intermediate_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
        vision.image_size,
        vision.patch_size,
    ) == real["vision"]
    assert (config.scale_factor, config.image_token_id) == (real["scale_factor"], real["image_token_id"])
    assert config.tie_word_embeddings is False and text.tie_word_embeddings is False

    processor = AutoProcessor.from_pretrained(folders[shape])
    images = processor.image_processor
    assert (
        images.size["longest_edge"],
        images.max_image_size["longest_edge"],
        images.do_image_splitting,
        processor.image_seq_len,
    ) == real["processor"]
    assert (list(images.image_mean), list(images.image_std), images.resample) == ([0.5] * 3, [0.5] * 3, 1)
    # The connector's arithmetic gives the processor's tokens per tile: (image_size / patch)^2 / scale_factor^2.
    assert (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2 == processor.image_seq_len

    tokenizer = processor.tokenizer
    assert len(tokenizer) == text.vocab_size
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ids == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == processor.image_token_id
    assert tokenizer.convert_tokens_to_ids("<fake_token_around_image>") == real["fake_image"]
    assert tokenizer.eos_token == "<end_of_utterance>" and tokenizer.eos_token_id == real["end_of_utterance"]
    assert tokenizer.pad_token_id == 2
    if text.vocab_size == 49280:  # SmolVLM 256M/500M: every image tag is one token, at its real id
        assert tokenizer.convert_tokens_to_ids(["<global-img>", "<row_1_col_1>", "<row_6_col_6>"]) == [
            49152,
            49153,
            49188,
        ]
    # Every pad id inside the vocabulary (Idefics3Config's default of 128002 is Idefics3-8B's).
    assert config.pad_token_id == text.pad_token_id == 2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:"


def expected_image_tokens(width: int, height: int, shape: str) -> dict[str, int]:
    """The architecture's arithmetic, by hand: upscale or downscale so the longest edge is size.longest_edge (the
    short edge rounded up to even, as transformers does), cover it with ceil(h/tile) x ceil(w/tile) tiles, add the
    global tile, and give each tile (image_size / patch)^2 / scale_factor^2 <image> tokens; one
    <fake_token_around_image> opens each tile and one closes the image; each split tile has a <row_r_col_c> tag."""
    longest, tile, _, _ = REAL[shape]["processor"]
    _, _, _, _, image_size, patch = REAL[shape]["vision"]
    per_tile = (image_size // patch) ** 2 // REAL[shape]["scale_factor"] ** 2
    if width >= height:
        w, h = longest, int(longest * height / width)
        h += h % 2
    else:
        w, h = int(longest * width / height), longest
        w += w % 2
    grid = math.ceil(h / tile) * math.ceil(w / tile) if (w > tile or h > tile) else 0
    return {
        "tiles": grid + 1,
        "image": (grid + 1) * per_tile,
        "fake": grid + 2,
        "row_col": grid,
        "global": 1,
    }


def wide_crop(photo: Path, out: Path) -> Path:
    """A 4:1 strip of a real photo: still split (4 tiles plus the global one), and the cheapest image that is."""
    image = Image.open(photo).convert("RGB")
    strip = image.crop((0, 0, image.width, image.width // 4))
    strip.save(out)
    return out


@pytest.mark.parametrize("shape", sorted(REAL))
def test_image_tokens_per_photo_follow_the_architecture(folders: dict[str, Path], shape: str, tmp_path: Path) -> None:
    assert PHOTOS, "the shared photos are missing (../shared/data/llamafactory-mllm-demo)"
    processor = AutoProcessor.from_pretrained(folders[shape])
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who are they?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    row_col = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    for photo in [*PHOTOS, wide_crop(PHOTOS[0], tmp_path / "wide.png")]:
        image = Image.open(photo).convert("RGB")
        want = expected_image_tokens(image.width, image.height, shape)
        batch = processor(text=[prompt], images=[[image]], return_tensors="pt")
        ids = batch["input_ids"][0].tolist()
        tile = REAL[shape]["processor"][1]
        assert tuple(batch["pixel_values"].shape) == (1, want["tiles"], 3, tile, tile), photo.name
        assert ids.count(REAL[shape]["image_token_id"]) == want["image"], photo.name
        assert ids.count(REAL[shape]["fake_image"]) == want["fake"], photo.name
        if REAL[shape]["text"][5] == 49280:  # the 2.2B tokenizer spells the tags out as text
            assert sum(ids.count(i) for i in tokenizer.convert_tokens_to_ids(row_col)) == want["row_col"]
            assert ids.count(tokenizer.convert_tokens_to_ids("<global-img>")) == want["global"]
    # The photos are about 300x170: upscaled to the longest edge, they are 4x3 grids of tiles.
    first = Image.open(PHOTOS[0])
    assert expected_image_tokens(first.width, first.height, shape)["tiles"] == 13


def test_500m_runs_a_forward_pass(folders: dict[str, Path]) -> None:
    """The 500M shapes line up end to end (SigLIP 768 x 16 shuffled -> 12,288 -> the 960-wide text model); one
    unsplit tile keeps it to seconds."""
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(folders["smolvlm-500m"])
    model = AutoModelForImageTextToText.from_pretrained(folders["smolvlm-500m"], dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who are they?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(PHOTOS[0]).convert("RGB")
    batch = processor(text=[prompt], images=[[image]], do_image_splitting=False, return_tensors="pt")
    assert (batch["input_ids"] == 49190).sum() == 64
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 49280)
    assert torch.isfinite(logits).all()


def test_2_2b_loads_and_runs(folders: dict[str, Path]) -> None:
    """SigLIP so400m/14 (1152 x 9 shuffled -> 10,368) into SmolLM2-1.7B (2048 wide, 49,155 tokens), in bf16 as the
    hub stores it; one unsplit tile of 81 tokens."""
    folder = folders["smolvlm-2.2b"]
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16).eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]}], add_generation_prompt=True
    )
    image = Image.open(PHOTOS[0]).convert("RGB")
    batch = processor(text=[prompt], images=[[image]], do_image_splitting=False, return_tensors="pt")
    assert (batch["input_ids"] == 49153).sum() == 81
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == 49155 and torch.isfinite(logits.float()).all()


# The demo's own questions and answers for its three photos (mllm_demo.json), on 4:1 strips of those photos.
DEMO_ROWS = [
    ("1.jpg", "Who are they?", "They're Kane and Gretzka from Bayern Munich."),
    ("2.jpg", "Who is he?", "He's Thomas Muller from Bayern Munich."),
    ("3.jpg", "Please describe this image", "Chinese astronaut Gui Haichao is giving a speech."),
]


def demo_strips(folder: Path) -> Path:
    """Three rows in the messages layout, each image a 4:1 strip of a demo photo: image splitting stays on (4 tiles
    plus the global one, 320 <image> tokens) at the least vision compute a split image can cost."""
    photos = {p.name: p for p in PHOTOS}
    lines = []
    for name, question, answer in DEMO_ROWS:
        wide_crop(photos[name], folder / f"strip-{name}.png")
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        lines.append(json.dumps({"messages": [user, assistant], "images": [f"strip-{name}.png"]}) + "\n")
    (folder / "rows.jsonl").write_text("".join(lines))
    return folder / "rows.jsonl"


def run_job(module: Any, request: Any, settings: WorkerSettings) -> Any:
    """One job's validate-then-run in this process, as the worker's job child runs it."""
    module.validate(request, settings)
    folder = settings.artifact_root / "jobs" / request.job_id
    folder.mkdir(parents=True)
    return module.run(request, JobContext(request.job_id, folder, settings))


@pytest.fixture
def one_torch_thread() -> Any:
    """One torch thread, as the worker gives each job process on a shared machine (VLMFLOW_TORCH_THREADS): two
    threads on two busy cores made the SFT steps 2-3x slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("VLMFLOW_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
def test_256m_prep_sft_evaluate_export_on_cpu(folders: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors import safe_open

    from vlmflow_worker import export
    from vlmflow_worker.evaluate import job as evaluate
    from vlmflow_worker.prep import job as prep
    from vlmflow_worker.train import job as train

    model = folders["smolvlm-256m"]
    data = tmp_path / "data"
    data.mkdir()
    settings = WorkerSettings(port=0, artifact_root=tmp_path / "artifacts", data_roots=[data, model.parent])
    timings: dict[str, float] = {}

    # 1. Prep counts each row with the real processor: 5 tiles x 64 <image> tokens, plus the text.
    started = time.monotonic()
    prepared = run_job(
        prep,
        jobs_pb2.PrepareDatasetRequest(
            job_id="prep",
            sources=[jobs_pb2.DatasetSource(uri=str(demo_strips(data)), layout=jobs_pb2.DATASET_LAYOUT_MESSAGES)],
            model=common_pb2.ModelRef(model_id=str(model)),
            max_length=1024,
            eval_fraction=0.34,
            seed=1,
        ),
        settings,
    )
    timings["prep"] = time.monotonic() - started
    dataset = Path(prepared.artifacts["dataset"])
    train_rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    assert len(train_rows) == 2 and len((dataset / "eval.jsonl").read_text().splitlines()) == 1
    strip = expected_image_tokens(300, 75, "smolvlm-256m")
    assert strip["tiles"] == 5 and strip["image"] == 320
    for row in train_rows:  # 320 image tokens, 6 fakes, 4 row tags and the global tag, then the conversation
        assert strip["image"] + strip["fake"] + strip["row_col"] + 1 + 10 < row["num_tokens"] < 450, row

    # 2. SFT: two rows, one per step, each seen twice; image splitting on; gradient checkpointing on. Four steps: each
    # costs 20-35 s on 2 cores, most of it a backward pass through the frozen vision tower (the input-grad hook that
    # gradient checkpointing installs also makes the vision embeddings require grad).
    started = time.monotonic()
    request = jobs_pb2.TrainRequest(
        job_id="sft",
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=common_pb2.ModelRef(model_id=str(model)),
        dataset_uri=str(dataset),
        output_uri="runs/sft",
        lora=jobs_pb2.LoraConfig(r=8, alpha=16, dropout=0.0),
        training=jobs_pb2.TrainingConfig(
            learning_rate=3e-3,
            max_steps=4,
            micro_batch_size=1,
            gradient_accumulation_steps=1,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            gradient_checkpointing=True,
            logging_steps=1,
            save_steps=100,
            eval_steps=0,
            max_length=1024,
            seed=7,
        ),
    )
    trained = run_job(train, request, settings)
    timings["sft"] = time.monotonic() - started
    log = (settings.artifact_root / "runs/sft/training_log.jsonl").read_text().splitlines()
    losses = [entry["loss"] for entry in map(json.loads, log) if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    # The second pass over the two rows loses well under the first: the random model starts near ln(49280) = 10.8
    # nats per answer token; this run measured 11.19, 10.83 then 8.22, 9.11 (seeded, so the same every run).
    assert sum(losses[-2:]) < 0.85 * sum(losses[:2]) and losses[-1] < losses[0], losses
    adapter = Path(trained.artifacts["adapter"])
    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        layers = {key.split(".layers.")[1].split(".")[0] for key in weights.keys() if "text_model" in key}
    assert layers == {str(i) for i in range(30)}, "LoRA must reach every text layer of the real model"

    # 3. Evaluate the base and the tuned variant on the held-out row.
    started = time.monotonic()
    evaluated = run_job(
        evaluate,
        jobs_pb2.EvaluateRequest(
            job_id="eval",
            model=common_pb2.ModelRef(model_id=str(model)),
            variants=[jobs_pb2.EvalVariant(name="sft", adapter_uri=str(adapter))],
            dataset_uri=str(dataset),
            generation=common_pb2.GenerationConfig(max_new_tokens=4),
            batch_size=1,
            max_samples=1,
            bootstrap_samples=50,
            output_uri="reports/eval",
        ),
        settings,
    )
    timings["evaluate"] = time.monotonic() - started
    summary = json.loads(Path(evaluated.artifacts["metrics"]).read_text())
    assert summary["variants"] == ["base", "sft"] and summary["num_samples"] == 1

    # 4. Export merges the adapter; plain transformers loads the folder and answers like base + adapter.
    started = time.monotonic()
    exported = run_job(
        export,
        jobs_pb2.ExportRequest(
            job_id="export",
            model=common_pb2.ModelRef(model_id=str(model), adapter_uri=str(adapter)),
            output_uri="exports/smolvlm-256m",
            card={"eval_metrics_uri": evaluated.artifacts["metrics"]},
        ),
        settings,
    )
    timings["export"] = time.monotonic() - started
    merged = AutoModelForImageTextToText.from_pretrained(exported.artifacts["model"], dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.config.text_config.num_hidden_layers == 30 and merged.config.image_token_id == 49190
    processor = AutoProcessor.from_pretrained(exported.artifacts["model"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who is he?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(data / "strip-2.jpg.png").convert("RGB")
    # One unsplit tile: the merge is checked on the real shapes without paying for five tiles again.
    batch = processor(text=[prompt], images=[[image]], do_image_splitting=False, return_tensors="pt")
    base = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, with_adapter(**batch).logits, rtol=1e-3, atol=1e-3)
    print(f"256M product path timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


@pytest.mark.parametrize(
    ("shape", "family", "billions", "image_tokens", "vocab"),
    # Published sizes: SmolVLM2-2.2B-Instruct (2.2B; a 448-px photo upscaled to 1536 px: 16 tiles + the whole, 81
    # tokens each) and Qwen2.5-VL-3B-Instruct (3.75B; one token per 28x28 pixels; its tokenizer's 151,665 entries).
    [("smolvlm2-2.2b", "SmolVLM2", 2.247, 17 * 81, 49280), ("qwen2.5-vl-3b", "Qwen2.5-VL", 3.755, 16 * 16, 151665)],
)
def test_the_other_families_architectures_have_their_published_sizes(
    shape: str, family: str, billions: float, image_tokens: int, vocab: int
) -> None:
    """The GPU check's --family architectures (fixtures/family_architectures.py), on the meta device: no weights."""
    from vlmflow_worker.families import family_of
    from vlmflow_worker.fixtures import family_architectures

    config = family_architectures.build_config(shape)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.001)
    assert family_of(config).name == family
    processor = family_architectures.build_processor(shape)
    token = processor.image_token
    ids = processor(text=[f"a{token}b"], images=[[Image.new("RGB", (448, 448), "red")]], return_tensors="pt")
    assert int((ids["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids(token)).sum()) == image_tokens
    assert len(processor.tokenizer) == vocab
