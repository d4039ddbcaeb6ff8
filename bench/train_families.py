"""SFT samples/s per model family (issue 17) on the tiny fixtures, CPU: the project's trainer (train_sft, answer-only
loss, LoRA on each family's text projections), one line per family.

python-worker/.venv/bin/python bench/train_families.py                    # every family, 2 repeats
python-worker/.venv/bin/python bench/train_families.py --families qwen3_vl --steps 20

The same synthetic shape-colour rows (aspect ratios 1:3 to 3:1, as bench/train.py) are prepared by PrepareDataset with
each family's processor, so each family pays its own image arithmetic: Idefics3 and SmolVLM2 tile photos (16 tokens
per 64-px tile, up to 4 tiles + the whole image), Qwen2.5-VL and Qwen3-VL resize them whole (one token per 28x28 or
32x32 pixels, 4 to 16 tokens). The fixtures differ in size too (see each fixture's docstring), so the figures compare
the code paths' overheads on one core, not the families' real models. Each run is its own process at one torch
thread; samples/s and real tokens/s are medians over the steps after --warmup, read from the trainer's log; peak is
the process's peak RSS. Writes bench/results/train-families-cpu-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from families import FAMILIES, model_folder
from machine import REPO, shown, write_result

STATE = REPO / ".state"


def one_run(args) -> dict[str, Any]:
    """One SFT run in this process; its figures from the trainer's per-step log."""
    import resource

    import torch

    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.sft import train_sft

    torch.set_num_threads(1)
    output = Path(args.output)
    train_sft(
        SFTConfig(
            model_id=args.model,
            dataset_dir=args.dataset,
            output_dir=str(output),
            dtype="float32",
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            learning_rate=1e-4,
            max_steps=args.steps,
            micro_batch_size=args.micro_batch,
            gradient_accumulation_steps=1,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            gradient_checkpointing=False,  # toy sizes: nothing to save, and it costs a second forward
            save_steps=10**6,
            eval_steps=0,
            logging_steps=1,
            max_length=2048,
        )
    )
    log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if e.get("samples_per_second") and e["step"] > args.warmup]
    return {
        "measured_steps": len(steps),
        "samples_per_second": round(statistics.median(e["samples_per_second"] for e in steps), 3),
        "tokens_per_second": round(statistics.median(e["tokens_per_second"] for e in steps), 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="Comma-separated (default: all).")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="Steps left out of the medians.")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="Runs per family (CPU timings are noisy).",
    )
    parser.add_argument("--work", default=str(STATE / "bench-train-families"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_run(args)), flush=True)
        return 0

    from train import prepared_dataset

    work = Path(args.work)
    summary: dict[str, dict[str, Any]] = {}
    runs = []
    for family in args.families.split(","):
        model = model_folder(family, "cpu")
        dataset = prepared_dataset(model, args.rows, work / family)
        rows = []
        for repeat in range(args.repeats):
            output = work / family / f"run{repeat}"
            command = [sys.executable, __file__, "--one", "--model", str(model), "--dataset", str(dataset)]
            command += ["--output", str(output), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            command += ["--micro-batch", str(args.micro_batch)]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLMFLOW_TORCH_THREADS": "1"}
            shutil.rmtree(output, ignore_errors=True)  # never resume an old run
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                print(done.stdout[-3000:], done.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"{family} failed (exit {done.returncode})")
            row = json.loads(line[len("RESULT ") :])
            row |= {"family": family, "repeat": repeat, "load_average_1m": os.getloadavg()[0]}
            rows.append(row)
        runs += rows
        sps = [r["samples_per_second"] for r in rows]
        summary[family] = {
            "samples_per_second_min": min(sps),
            "samples_per_second_max": max(sps),
            "tokens_per_second_mean": round(sum(r["tokens_per_second"] for r in rows) / len(rows), 1),
            "tokens_per_sample": round(rows[0]["tokens_per_second"] / rows[0]["samples_per_second"], 1),
            "peak_rss_gib_max": max(r["peak_rss_gib"] for r in rows),
        }
        s = summary[family]
        print(
            f"{family:>10}: {s['samples_per_second_min']:6.2f}–{s['samples_per_second_max']:<6.2f} samples/s "
            f"{s['tokens_per_second_mean']:7.0f} tokens/s ({s['tokens_per_sample']:.0f} per sample)  "
            f"peak RSS {s['peak_rss_gib_max']:.2f} GiB",
            flush=True,
        )
    settings = {k: v for k, v in vars(args).items() if k not in ("one", "model", "dataset", "output")}
    out = write_result("train-families-cpu", {"settings": settings, "summary": summary, "runs": runs})
    print(f"\nwrote {shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
