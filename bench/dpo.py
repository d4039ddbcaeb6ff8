"""DPO step time and peak memory: the project's DPO job (vlmflow_worker.train.dpo) beside a plain TRL `DPOTrainer`
script on the same model, preference rows, LoRA and micro-batch; each variant in its own process, --repeats times.

python-worker/.venv/bin/python bench/dpo.py                  # tiny model, CPU (fp32 LoRA)
python-worker/.venv/bin/python bench/dpo.py --device cuda    # SmolVLM-Instruct architecture, random weights, bf16 LoRA,
                                                             # full image splitting (17 tiles per image)

Data and model come from bench/dpo_eval.py (which also puts DPO beside SFT and measures evaluation). Step time is the
median over the steps after --warmup (time between step ends); peak memory is CUDA max allocated or the process's
peak RSS. The TRL script keeps TRL's defaults (reference = adapter disabled, gradient checkpointing on, bf16 on CUDA,
max_length 1024) and sets only what both must share.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from dpo_eval import datasets, model_folder
from families import FAMILIES
from machine import REPO, shown, write_result

STATE = REPO / ".state"


class StepClock:
    """Step-end times, from which the per-step durations after the warm-up come."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[float] = []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.ends.append(time.perf_counter())

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    clock.losses.append(float(logs["loss"]))

        return _Clock()


def run_project(args, model: Path, dataset: Path, output: Path, clock: StepClock) -> None:
    from vlmflow_worker.train import dpo

    make_trainer = dpo.make_trainer

    def with_clock(*a, **kw):
        trainer = make_trainer(*a, **kw)
        trainer.add_callback(clock.callback())
        return trainer

    dpo.make_trainer = with_clock  # bench-only hook
    dpo.train_dpo(
        dpo.DPOTrainConfig(
            model_id=str(model),
            dataset_dir=str(dataset),
            output_dir=str(output),
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            learning_rate=5e-5,
            beta=0.1,
            max_steps=args.steps,
            micro_batch_size=args.micro_batch,
            gradient_accumulation_steps=1,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            save_steps=10**6,
            eval_steps=0,
            logging_steps=1,
            max_length=8192,
            seed=0,
        )
    )


def run_trl(args, model_dir: Path, dataset: Path, output: Path, clock: StepClock) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.sft import lora_targets

    cuda = args.device == "cuda"
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, device_map="cuda" if cuda else None
    )
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines() if line.strip()]
    data = Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                "images": [Image.open(dataset / p).convert("RGB") for p in r["images"]],
            }
            for r in rows
        ]
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=lora_targets(SFTConfig(), model), task_type="CAUSAL_LM"
    )
    config = DPOConfig(
        output_dir=str(output),
        per_device_train_batch_size=args.micro_batch,
        learning_rate=5e-5,
        beta=0.1,
        max_steps=args.steps,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=processor,
        peft_config=lora,
        callbacks=[clock.callback()],
    )
    trainer.train()


def one_variant(args) -> dict[str, Any]:
    clock = StepClock()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    output = Path(args.work) / args.variant
    shutil.rmtree(output, ignore_errors=True)  # a checkpoint left by an earlier run would be resumed
    if args.variant == "project":
        run_project(args, Path(args.model), Path(args.dataset), output, clock)
    else:
        run_trl(args, Path(args.model), Path(args.dataset), output, clock)
    steps = [b - a for a, b in zip(clock.ends[args.warmup - 1 : -1], clock.ends[args.warmup :], strict=True)]
    peak = (
        torch.cuda.max_memory_allocated()
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "variant": args.variant,
        "measured_steps": len(steps),
        "step_seconds_median": round(statistics.median(steps), 3),
        "step_seconds_min": round(min(steps), 3),
        "step_seconds_max": round(max(steps), 3),
        "peak_memory_gib": round(peak / 2**30, 3),
        "losses": clock.losses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--family", choices=FAMILIES, default="idefics3", help="Model family (bench/families.py).")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default=str(STATE / "bench-dpo"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per run (0: torch's default). 1 on a small shared CPU: more threads only spin.",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        if args.threads and args.device == "cpu":
            torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(one_variant(args)), flush=True)
        return 0

    work = Path(args.work) / args.device
    model = model_folder(args.device, args.family)
    dataset = datasets(work / args.family, args.rows, 8)["preference"]
    rows = []
    for repeat in range(args.repeats):
        for variant in ("project", "trl"):
            command = [sys.executable, __file__, "--variant", variant, "--dataset", str(dataset), "--model", str(model)]
            command += ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            command += ["--micro-batch", str(args.micro_batch), "--work", str(work / f"run{repeat}")]
            command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                print(done.stdout[-3000:], done.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"{variant} failed (exit {done.returncode})")
            row = json.loads(line[len("RESULT ") :]) | {"repeat": repeat, "load_average_1m": os.getloadavg()[0]}
            rows.append(row)
            print(
                f"{variant:>8} #{repeat}: {row['step_seconds_median']:.3f} s/step (median), "
                f"peak {row['peak_memory_gib']:.2f} GiB",
                flush=True,
            )
    print(f"\nDPO on {args.device}: micro-batch {args.micro_batch}, {args.steps} steps ({args.warmup} warm-up)")
    print(f"{'variant':>8} | {'s/step (medians)':>18} | {'peak GiB':>8}")
    summary = {}
    for variant in ("project", "trl"):
        mine = [r for r in rows if r["variant"] == variant]
        medians = [r["step_seconds_median"] for r in mine]
        summary[variant] = {
            "step_seconds_median_min": min(medians),
            "step_seconds_median_max": max(medians),
            "peak_memory_gib_max": max(r["peak_memory_gib"] for r in mine),
        }
        peak = summary[variant]["peak_memory_gib_max"]
        print(f"{variant:>8} | {min(medians):8.3f}–{max(medians):<8.3f} | {peak:8.2f}")
    result = {"device": args.device, "family": args.family, "micro_batch": args.micro_batch, "steps": args.steps}
    suffix = "" if args.family == "idefics3" else f"-{args.family}"  # Idefics3 keeps its record's name
    out = write_result(f"dpo-{args.device}{suffix}", result | {"summary": summary, "rows": rows})
    print(f"\nwrote {shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
