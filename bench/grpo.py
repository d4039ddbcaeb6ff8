"""GRPO seconds per step beside SFT and DPO, through the project's jobs, on the same model, images and questions.

python-worker/.venv/bin/python bench/grpo.py                  # tiny model, CPU, fp32 LoRA
python-worker/.venv/bin/python bench/grpo.py --device cuda    # SmolVLM-Instruct architecture, random weights, bf16
python-worker/.venv/bin/python bench/grpo.py --family qwen2_5_vl  # another family (bench/families.py)

Data and model come from bench/dpo_eval.py: shape-colour SFT rows (GRPO's prompts and references) and preference
rows over the same images. Each run is its own process. A step is one optimizer step of --micro-batch sequences:
SFT rows, DPO pairs (chosen and rejected: twice the sequences, plus the reference pass), GRPO completions
(--micro-batch / --generations prompts, each sampled --generations times for up to --completion-tokens tokens, then
scored and trained on). Step time is the median over the steps after --warmup, from the jobs' own progress logs.
Writes bench/results/grpo-<device>[-<family>]-latest.json (bench/gpu_check.py runs it as its GRPO part).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from families import FAMILIES
from machine import REPO, shown, write_result


def child(args) -> None:
    """One training run; prints its measurement as the last stdout line."""
    from dpo_eval import measure_training

    work = Path(args.work)
    dataset = work / ("dataset-preference" if args.one == "dpo" else "dataset-sft")
    print(json.dumps(measure_training(args.one, Path(args.model), dataset, work / f"run-{args.one}", args)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="Steps left out of the step time.")
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=8,
        help="Sequences per step (GRPO: completions).",
    )
    parser.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt.")
    parser.add_argument("--completion-tokens", type=int, default=8, help="GRPO's max completion length.")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="idefics3",
        help="Model family (bench/families.py).",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
        return

    from dpo_eval import datasets, model_folder

    model = model_folder(args.device, args.family)
    results = {}
    with tempfile.TemporaryDirectory(prefix="vlmflow-bench-grpo-") as tmp:
        work = Path(tmp)
        datasets(work, args.rows, 8)
        for one in ("sft", "dpo", "grpo"):
            command = [
                sys.executable,
                __file__,
                "--one",
                one,
                "--model",
                str(model),
                "--work",
                str(work),
            ]
            command += [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("one", "model", "work")
            ]
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), os.environ.get("PYTHONPATH", "")]),
            }
            done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{one} failed:\n{done.stderr[-4000:]}")
            results[one] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{one}: done", file=sys.stderr)

    gib = 2**30
    print(f"\nmodel {shown(model)} on {args.device}, {args.micro_batch} sequences a step, LoRA r16, {args.steps} steps")
    print(f"GRPO: {args.micro_batch // args.generations} prompts x {args.generations} completions of up to "
          f"{args.completion_tokens} tokens")  # fmt: skip
    print(f"{'run':<8}{'s/step (median)':>16}{'× SFT':>8}{'tokens/s':>10}{'peak GiB':>10}")
    for kind, r in results.items():
        ratio = r["step_seconds_median"] / results["sft"]["step_seconds_median"]
        print(
            f"{kind.upper():<8}{r['step_seconds_median']:>16.3f}{ratio:>8.2f}{r['tokens_per_second_median']:>10.0f}"
            f"{r['peak_memory_bytes'] / gib:>10.2f}"
        )
    settings = {k: v for k, v in vars(args).items() if k not in ("one", "model", "work")}
    suffix = "" if args.family == "idefics3" else f"-{args.family}"
    out = write_result(f"grpo-{args.device}{suffix}", {"settings": settings, "runs": results})
    print(f"\nwrote {shown(out)}")


if __name__ == "__main__":
    main()
