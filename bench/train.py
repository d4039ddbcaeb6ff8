"""SFT throughput and memory: the project's trainer (train/sft.py), padded and padding-free (`-packed` variants:
SFTConfig.packing), beside a plain TRL `SFTTrainer` script; same model, data, LoRA and micro-batch; each variant in
its own process.

python-worker/.venv/bin/python bench/train.py                     # tiny model, CPU (LoRA, fp32): cannot rot
python-worker/.venv/bin/python bench/train.py --device cuda       # SmolVLM-Instruct architecture, random weights:
                                                                  # bf16 LoRA and QLoRA NF4, full image splitting

On CUDA the model has SmolVLM-Instruct's published config (fixtures/architectures.py), random weights saved once
under .state/models/, and the processor its real sizes (longest edge 1536, 384 px tiles, 81 tokens per tile), so every
synthetic image becomes 16 tiles + the global one = 17 tiles, 1,377 image tokens. Micro-batch 4.

Reported per variant, over the steps after --warmup: samples/s, tokens/s (real, unpadded), padding share, peak
memory (CUDA: max allocated; CPU: the process's peak RSS), and MFU = (4·N_text·tokens + 2·N_vision·patch tokens) / s
over the measured dense matmul rate of the device (bf16 on CUDA, fp32 on CPU): the base is frozen (LoRA), so the text
model costs forward + input gradients (4·N per token) and the vision tower, which has no adapter, forward only.

The TRL script uses TRL's defaults (padded batches, loss on every token, gradient checkpointing on, bf16 on CUDA),
with max_length=None so no image token is cut. Only the hyper-parameters both must share are set alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import families
import torch
from machine import REPO, shown, write_result

STATE = REPO / ".state"
VARIANTS_CPU = ["project-lora", "project-lora-packed", "trl-lora"]
VARIANTS_CUDA = [
    "project-lora",
    "project-lora-packed",
    "trl-lora",
    "project-qlora",
    "project-qlora-packed",
    "trl-qlora",
]


# ---- 1. model and data ------------------------------------------------------------------------------------------


def model_folder(device: str, family: str = "idefics3") -> Path:
    """The family's tiny model (CPU) or its real architecture with random weights (CUDA; Idefics3: SmolVLM-Instruct),
    as a local model folder (bench/families.py)."""
    return families.model_folder(family, device)


def prepared_dataset(model: Path, rows: int, work: Path, image_side: int = 0) -> Path:
    """Synthetic shape-colour rows of varied aspect ratios, prepared by the project's PrepareDataset job (the same
    split for every variant)."""
    from vlmflow.v1 import common_pb2, jobs_pb2
    from vlmflow_worker.fixtures.synthetic import generate
    from vlmflow_worker.jobs.context import JobContext
    from vlmflow_worker.prep.job import run as prepare
    from vlmflow_worker.serve.settings import WorkerSettings

    settings = WorkerSettings(host="127.0.0.1", port=0, artifact_root=work, data_roots=[model.parent], job_capacity=1)
    data = generate("shape_colour", rows, 0, work / "data")
    vary_aspect_ratios(data, image_side)
    request = jobs_pb2.PrepareDatasetRequest(
        job_id="bench-prep",
        sources=[jobs_pb2.DatasetSource(uri=str(data), layout=jobs_pb2.DATASET_LAYOUT_MESSAGES)],
        model=common_pb2.ModelRef(model_id=str(model)),
        max_length=2048,
        eval_fraction=0.05,
        output_uri="datasets",
    )
    (work / "jobs" / "bench-prep").mkdir(parents=True, exist_ok=True)
    result = prepare(request, JobContext("bench-prep", work / "jobs" / "bench-prep", settings))
    return Path(result.artifacts["dataset"])


def vary_aspect_ratios(data: Path, image_side: int = 0) -> None:
    """Real VLM data mixes shapes: images stretched to aspect ratios from 1:3 to 3:1 (seeded) give rows of different
    tile counts, so the image-token count varies per row, as padding and packing meet it in practice. `image_side`
    (when set) is the longest side: photo-sized images make decoding and resizing cost what they cost on real data."""
    import random

    from PIL import Image

    rng = random.Random(0)
    for line in data.read_text().splitlines():
        for name in json.loads(line)["images"]:
            path = data.parent / name
            image = Image.open(path)
            ratio = rng.choice([1 / 3, 1 / 2, 1, 1, 2, 3])
            side = image_side or max(image.size)
            image.resize((max(16, round(side * min(1, ratio))), max(16, round(side * min(1, 1 / ratio))))).save(path)


def flops_per_token(model) -> tuple[int, int, int]:
    """(N_text without the embedding table, N_vision, patch tokens per tile) of a model of any family: the text side is
    every parameter outside the vision tower's blocks (the projector or merger included: it runs per image token), the
    vision side the tower's blocks (families/: its `vision_tower`). Patches per tile: Idefics3's and SmolVLM's square
    tiles; 0 for Qwen-VL, whose batches hold their patches flat (Meter counts those one by one)."""
    import re

    from vlmflow_worker.families import family_of

    vision_tower = re.compile(rf"{family_of(model.config).vision_tower}\.")
    text = vision = 0
    names = []
    for name, p in model.named_parameters():
        names.append(name)
        if "lora_" in name or "embed_tokens" in name:
            continue
        if vision_tower.search(name):
            vision += p.numel()
        else:
            text += p.numel()
    if not any("lm_head" in name for name in names):  # tied to the embeddings (Qwen-VL's small models): still a matmul
        text += model.get_output_embeddings().weight.numel()
    vc = model.config.vision_config
    per_tile = (vc.image_size // vc.patch_size) ** 2 if hasattr(vc, "image_size") else 0
    return text, vision, per_tile


def matmul_rate(device: str) -> float:
    """Measured dense matmul FLOP/s: bf16 8192³ on CUDA, fp32 1024³ on CPU."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 50 if device == "cuda" else 10
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


# ---- 2. one variant, in its own process ---------------------------------------------------------------------------


class Meter:
    """Throughput between the end of step `warmup` and the last step, from the trainer's log events."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.marks: list[tuple[int, float, int, int, int, int]] = []  # step, time, tokens, padded, tiles, patches
        self.tokens = self.padded = self.tiles = self.patches = 0
        self.losses: list[tuple[int, float]] = []

    def count(self, batch: dict[str, torch.Tensor]) -> None:
        mask = batch.get("attention_mask")  # none in a packed batch: every token is real
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        self.padded += int(batch["input_ids"].numel())
        if "pixel_attention_mask" in batch:  # real tiles (Idefics3 pads the tile dimension too)
            self.tiles += int(batch["pixel_attention_mask"].flatten(2).any(-1).sum())
        elif "pixel_values" in batch and batch["pixel_values"].dim() == 5:
            self.tiles += int(batch["pixel_values"].shape[0] * batch["pixel_values"].shape[1])
        for key in ("pixel_values", "pixel_values_videos"):  # Qwen-VL: flat patches, each one vision token
            if key in batch and batch[key].dim() == 2:
                self.patches += int(batch[key].shape[0])

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step in (meter.warmup, state.max_steps):
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    counts = (meter.tokens, meter.padded, meter.tiles, meter.patches)
                    meter.marks.append((state.global_step, time.perf_counter(), *counts))

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    meter.losses.append((state.global_step, float(logs["loss"])))

        return _Callback()


def lora_config(model):
    from peft import LoraConfig

    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.sft import lora_targets

    config = SFTConfig(lora_r=16, lora_alpha=32, lora_dropout=0.05)
    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=lora_targets(config, model),
        bias="none",
        task_type="CAUSAL_LM",
    )


def run_project(args, dataset: Path, model: Path, meter: Meter, output: Path) -> Any:
    """The project's path: train_sft with its answer-only collator and atomic-checkpoint trainer."""
    from vlmflow_worker.train import sft
    from vlmflow_worker.train.config import SFTConfig

    class MeteredTrainer(sft.CountingTrainer):
        """Counts each batch as the step takes it: the collator may run in data-loader worker processes."""

        def __init__(self, *a, **kw):
            kw["callbacks"] = [*kw.get("callbacks", []), meter.callback()]
            super().__init__(*a, **kw)

        def training_step(self, model, inputs, *a, **kw):
            meter.count(inputs)
            return super().training_step(model, inputs, *a, **kw)

    sft.CountingTrainer = MeteredTrainer  # bench-only hook
    config = SFTConfig(
        model_id=str(model),
        dataset_dir=str(dataset),
        output_dir=str(output),
        quantization="nf4" if "qlora" in args.variant else "none",
        packing=args.variant.endswith("-packed"),
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        learning_rate=1e-4,
        max_steps=args.steps,
        micro_batch_size=args.micro_batch,
        gradient_accumulation_steps=1,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        gradient_checkpointing=True,
        save_steps=10**6,  # no checkpoint inside the measured steps
        eval_steps=0,
        logging_steps=1,
        max_length=2048,
    )
    sft.train_sft(config)
    return None


def run_trl(args, dataset: Path, model_dir: Path, meter: Meter, output: Path) -> Any:
    """A plain TRL script: from_pretrained, SFTTrainer with its defaults and the same LoRA."""
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    cuda = args.device == "cuda"
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if "qlora" in args.variant:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForImageTextToText.from_pretrained(model_dir, device_map="cuda" if cuda else None, **kwargs)
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines() if line.strip()]
    data = Dataset.from_list(
        [
            {"messages": r["messages"], "images": [Image.open(dataset / p).convert("RGB") for p in r["images"]]}
            for r in rows
        ]
    )

    class CountingCollator(DataCollatorForVisionLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            meter.count(batch)
            return batch

    config = SFTConfig(
        output_dir=str(output),
        per_device_train_batch_size=args.micro_batch,
        learning_rate=1e-4,
        max_steps=args.steps,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        max_length=None,
        bf16=cuda,  # TRL's default on CUDA; fp32 on CPU like the project's trainer
        use_cpu=not cuda,
        seed=42,
        disable_tqdm=True,
    )
    collator = CountingCollator(processor=processor, max_length=None, pad_to_multiple_of=None)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=processor,
        data_collator=collator,
        peft_config=lora_config(model),
        callbacks=[meter.callback()],
    )
    trainer.train()
    return trainer.model


def one_variant(args) -> dict[str, Any]:
    from transformers import AutoModelForImageTextToText

    dataset, model = Path(args.dataset), Path(args.model)
    output = Path(args.work) / args.variant
    shutil.rmtree(output, ignore_errors=True)  # a checkpoint left by an earlier run would be resumed
    meter = Meter(args.warmup)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    (run_project if args.variant.startswith("project") else run_trl)(args, dataset, model, meter, output)
    (s0, t0, k0, p0, i0, f0), (s1, t1, k1, p1, i1, f1) = meter.marks[0], meter.marks[-1]
    seconds = t1 - t0
    samples = (s1 - s0) * args.micro_batch
    with torch.device("meta"):  # shapes only, for the FLOP count
        from transformers import AutoConfig

        shapes = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model))
    n_text, n_vision, patches_per_tile = flops_per_token(shapes)
    flops = 4 * n_text * (k1 - k0) + 2 * n_vision * (patches_per_tile * (i1 - i0) + (f1 - f0))
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "variant": args.variant,
        "measured_steps": s1 - s0,
        "seconds": round(seconds, 3),
        "samples_per_second": round(samples / seconds, 3),
        "tokens_per_second": round((k1 - k0) / seconds, 1),
        "padding_share": round(1 - (k1 - k0) / max(p1 - p0, 1), 3),
        "tiles_per_sample": round((i1 - i0) / max(samples, 1), 2),
        "tokens_per_sample": round((k1 - k0) / max(samples, 1), 1),
        "peak_memory_gib": round(peak / 2**30, 3),
        "achieved_flops_per_second": flops / seconds,
        "n_text": n_text,
        "n_vision": n_vision,
        "losses": meter.losses,
    }


# ---- 3. the driver ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--family",
        choices=families.FAMILIES,
        default="idefics3",
        help="Model family: its tiny fixture on CPU, its real architecture with random weights on CUDA.",
    )
    parser.add_argument("--variants", default="", help="Comma-separated; default: all for the device.")
    parser.add_argument("--steps", type=int, default=0, help="Optimizer steps (default 30 on CPU, 40 on CUDA).")
    parser.add_argument("--warmup", type=int, default=5, help="Steps before the measurement starts.")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each variant (CPU timings are noisy).")
    parser.add_argument("--work", default=str(STATE / "bench-train"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per run (0: torch's default). 1 on a small shared CPU: more threads only spin.",
    )
    parser.add_argument(
        "--data-workers",
        default="",
        help="Data-loader worker processes for the project's variants (VLMFLOW_DATALOADER_WORKERS); comma-separated "
        "values run each project variant once per value (0,2: what decoding ahead of the step gains); default: the "
        "project's default.",
    )
    parser.add_argument(
        "--image-side", type=int, default=0, help="Longest image side in pixels (default: the synthetic size)."
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.device == "cpu" else 40)
    if args.variant:
        if args.threads and args.device == "cpu":
            torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(one_variant(args)), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU")

    work = Path(args.work) / args.device
    model = model_folder(args.device, args.family)
    dataset = prepared_dataset(model, args.rows, work / f"side-{args.image_side}", args.image_side)
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)  # the rate of what one run may use
    rate = matmul_rate(args.device)
    variants = args.variants.split(",") if args.variants else (VARIANTS_CPU if args.device == "cpu" else VARIANTS_CUDA)
    rows = []
    workers = args.data_workers.split(",") if args.data_workers else [""]
    runs = [(v, w) for v in variants for w in (workers if v.startswith("project") else [""])]
    for repeat in range(args.repeats):
        for variant, worker_count in runs:
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            if worker_count:
                env["VLMFLOW_DATALOADER_WORKERS"] = worker_count
            command = [sys.executable, __file__, "--variant", variant, "--dataset", str(dataset), "--model", str(model)]
            command += ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            command += ["--micro-batch", str(args.micro_batch), "--work", str(work / f"run{repeat}")]
            command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                print(done.stdout[-3000:], done.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"{variant} failed (exit {done.returncode})")
            row = json.loads(line[len("RESULT ") :]) | {"repeat": repeat, "load_average_1m": os.getloadavg()[0]}
            if worker_count:
                row["variant"] = f"{variant}-w{worker_count}"  # its own line in the summary
            row["mfu"] = round(row["achieved_flops_per_second"] / rate, 5)
            rows.append(row)
            print(
                f"{row['variant']:>14} #{repeat}: {row['samples_per_second']:8.2f} samples/s "
                f"{row['tokens_per_second']:9.0f} tok/s  peak {row['peak_memory_gib']:.2f} GiB  MFU {row['mfu']:.1%}",
                flush=True,
            )

    print(
        f"\n{args.device}: micro-batch {args.micro_batch}, {args.steps} steps ({args.warmup} warm-up), "
        f"matmul rate {rate / 1e12:.3f} TFLOP/s"
    )
    print(f"{'variant':>14} | {'samples/s':>16} | {'tokens/s':>10} | {'pad':>5} | {'peak GiB':>8} | {'MFU':>6} | x TRL")
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        sps = [r["samples_per_second"] for r in mine]
        summary[variant] = {
            "samples_per_second_min": min(sps),
            "samples_per_second_max": max(sps),
            "tokens_per_second_mean": round(sum(r["tokens_per_second"] for r in mine) / len(mine), 1),
            "peak_memory_gib_max": max(r["peak_memory_gib"] for r in mine),
            "mfu_mean": round(sum(r["mfu"] for r in mine) / len(mine), 4),
            "padding_share": mine[0]["padding_share"],
        }
    for variant, s in summary.items():
        trl = summary.get("trl-qlora" if "qlora" in variant else "trl-lora")
        mean = (s["samples_per_second_min"] + s["samples_per_second_max"]) / 2
        vs = mean / ((trl["samples_per_second_min"] + trl["samples_per_second_max"]) / 2) if trl else float("nan")
        s["x_trl"] = round(vs, 3)
        print(
            f"{variant:>14} | {s['samples_per_second_min']:7.2f}–{s['samples_per_second_max']:<7.2f} | "
            f"{s['tokens_per_second_mean']:10.0f} | {s['padding_share']:5.1%} | {s['peak_memory_gib_max']:8.2f} | "
            f"{s['mfu_mean']:6.1%} | {vs:.2f}"
        )
    result = {
        "device": args.device,
        "model": families.model_name(args.family, args.device),
        "family": args.family,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "matmul_tflops": round(rate / 1e12, 4),
        "torch_threads": args.threads or torch.get_num_threads(),
        "data_workers": args.data_workers or "default",
        "summary": summary,
        "rows": rows,
    }
    suffix = "" if args.family == "idefics3" else f"-{args.family}"  # Idefics3 keeps its record's name
    out = write_result(f"train-{args.device}{suffix}", result)
    print(f"\nwrote {shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
