"""DPO step time and peak memory next to SFT on the same model and data, and evaluation throughput.

python-worker/.venv/bin/python bench/dpo_eval.py                  # tiny model, CPU, fp32 LoRA
python-worker/.venv/bin/python bench/dpo_eval.py --device cuda    # SmolVLM-Instruct architecture, random weights,
                                                                  # bf16 LoRA, full image splitting (17 tiles/image)

Same synthetic shape-colour prompts and images for both: SFT rows (question -> right colour) and preference rows
(chosen = the right colour, rejected = a wrong one). Each training run and each evaluation runs in its own process,
so peak memory is its own (CUDA: max allocated; CPU: the process's peak RSS, model load included). Step time is the
median over the steps after --warmup, from the trainers' per-step progress logs. A DPO step processes twice the
sequences of an SFT step (chosen and rejected) plus a no-grad reference pass with the adapter disabled.

Evaluation: items/s of the Evaluate job for base + one adapter on the eval split (greedy answers; on the preference
split also the log-probabilities of both answers under each variant).
Writes bench/results/dpo-eval-<device>-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from machine import REPO, shown, write_result

STATE = REPO / ".state"


# ---- 1. model and data ------------------------------------------------------------------------------------------


def model_folder(device: str, family: str = "idefics3") -> Path:
    """The family's tiny model (CPU) or its real architecture with random weights (CUDA; Idefics3: SmolVLM-Instruct)
    as a local model folder (bench/families.py)."""
    import families

    return families.model_folder(family, device)


def datasets(work: Path, rows: int, held_out: int) -> dict[str, Path]:
    """Two prepared datasets (prep's output layout) over the same images and questions: SFT and preference."""
    from vlmflow_worker.fixtures.synthetic import generate

    out = {}
    for kind, preference in (("sft", False), ("preference", True)):
        raw = work / f"raw-{kind}"
        generate("shape_colour", rows, 0, raw, preference=preference)
        folder = work / f"dataset-{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(raw / "images", folder / "images", dirs_exist_ok=True)
        lines = [json.loads(line) for line in (raw / "data.jsonl").read_text().splitlines()]
        lines = [{"id": f"r{i}", **row} for i, row in enumerate(lines)]
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:-held_out]))
        (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[-held_out:]))
        meta = {
            "kind": kind,
            "fingerprint": "bench",
            "train": "train.jsonl",
            "eval": "eval.jsonl",
        }
        (folder / "dataset.json").write_text(json.dumps(meta))
        out[kind] = folder
    return out


# ---- 2. one measurement, in its own process ---------------------------------------------------------------------


def measure_training(kind: str, model: Path, dataset: Path, output: Path, args) -> dict[str, Any]:
    import torch

    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.dpo import DPOTrainConfig, train_dpo
    from vlmflow_worker.train.sft import train_sft

    common = {
        "model_id": str(model),
        "dataset_dir": str(dataset),
        "output_dir": str(output),
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "max_steps": args.steps,
        "micro_batch_size": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "gradient_checkpointing": args.device == "cuda",
        "save_steps": 10_000,
        "eval_steps": 0,
        "logging_steps": 1,
        "max_length": 8192,
        "seed": 0,
    }
    if kind == "sft":
        result = train_sft(SFTConfig(learning_rate=1e-4, **common))
    elif kind == "grpo":  # bench/grpo.py: its options say the group size and completion length
        from vlmflow_worker.train.grpo import GRPOTrainConfig, train_grpo

        grpo = {"num_generations": args.generations, "max_completion_length": args.completion_tokens}
        result = train_grpo(GRPOTrainConfig(learning_rate=1e-5, **grpo, **common))
    else:
        result = train_dpo(DPOTrainConfig(learning_rate=5e-5, beta=0.1, **common))
    log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "samples_per_second" in e and e["step"] > args.warmup]
    step_seconds = [args.micro_batch / e["samples_per_second"] for e in steps if e["samples_per_second"]]
    tokens = [e["tokens_per_second"] for e in steps]
    peak = (
        torch.cuda.max_memory_allocated()
        if torch.cuda.is_available()
        else max(e["peak_memory_bytes"] for e in log if "peak_memory_bytes" in e)
    )
    return {
        "kind": kind,
        "steps": int(result.metrics["global_step"]),
        "measured_steps": len(step_seconds),
        "step_seconds_median": statistics.median(step_seconds),
        "samples_per_second": args.micro_batch / statistics.median(step_seconds),
        "tokens_per_second_median": statistics.median(tokens),
        "peak_memory_bytes": int(peak),
        "final_loss": next((e["loss"] for e in reversed(log) if "loss" in e), None),
        **(
            {
                "final_rewards/margins": next(
                    (e["rewards/margins"] for e in reversed(log) if "rewards/margins" in e),
                    None,
                )
            }
            if kind == "dpo"
            else {}
        ),
    }


def measure_eval(kind: str, model: Path, dataset: Path, adapter: Path, output: Path, args) -> dict[str, Any]:
    import torch

    from vlmflow.v1 import common_pb2, jobs_pb2
    from vlmflow_worker.evaluate.job import run
    from vlmflow_worker.jobs.context import JobContext
    from vlmflow_worker.serve.settings import WorkerSettings

    settings = WorkerSettings(port=0, artifact_root=output.parent)
    request = jobs_pb2.EvaluateRequest(
        job_id="bench-eval",
        model=common_pb2.ModelRef(model_id=str(model)),
        variants=[jobs_pb2.EvalVariant(name="tuned", adapter_uri=str(adapter))],
        dataset_uri=str(dataset),
        generation=common_pb2.GenerationConfig(max_new_tokens=args.max_new_tokens),
        batch_size=args.eval_batch,
        bootstrap_samples=200,
        output_uri=str(output / "report"),
    )
    (output / "job").mkdir(parents=True, exist_ok=True)
    metrics = run(request, JobContext("bench-eval", output / "job", settings)).metrics
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _rss_peak()
    return {
        "kind": f"eval-{kind}",
        "items": args.held_out,
        "items_per_second_base": metrics["base/items_per_second"],
        "items_per_second_tuned": metrics["tuned/items_per_second"],
        "peak_memory_bytes": int(peak),
    }


def _rss_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args) -> None:
    """One measurement; prints its JSON as the last stdout line."""
    model, work = Path(args.model), Path(args.work)
    if args.one in ("sft", "dpo"):
        dataset = work / ("dataset-sft" if args.one == "sft" else "dataset-preference")
        out = measure_training(args.one, model, dataset, work / f"run-{args.one}", args)
    else:
        kind = args.one.removeprefix("eval-")
        dataset = work / ("dataset-sft" if kind == "sft" else "dataset-preference")
        adapter = work / f"run-{'sft' if kind == 'sft' else 'dpo'}" / "adapter"
        out = measure_eval(kind, model, dataset, adapter, work / f"eval-{kind}", args)
    print(json.dumps(out))


# ---- 3. the table -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=0, help="Training steps (default 12 CPU, 20 CUDA).")
    parser.add_argument("--warmup", type=int, default=2, help="Steps left out of the step time.")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (12 if args.device == "cpu" else 20)
    if args.one:
        child(args)
        return

    model = model_folder(args.device)
    with tempfile.TemporaryDirectory(prefix="vlmflow-bench-dpo-") as tmp:
        work = Path(tmp)
        datasets(work, args.rows, args.held_out)
        results = []
        for one in ("sft", "dpo", "eval-sft", "eval-preference"):
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
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{one}: done", file=sys.stderr)

    sft, dpo, eval_sft, eval_pref = results
    gib = 2**30
    print(f"\nmodel {shown(model)} on {args.device}, micro-batch {args.micro_batch}, LoRA r16, {args.steps} steps")
    print(f"{'run':<24}{'step s (median)':>16}{'samples/s':>11}{'tokens/s':>10}{'peak GiB':>10}")
    for r in (sft, dpo):
        print(
            f"{r['kind'].upper():<24}{r['step_seconds_median']:>16.3f}{r['samples_per_second']:>11.2f}"
            f"{r['tokens_per_second_median']:>10.0f}{r['peak_memory_bytes'] / gib:>10.2f}"
        )
    print(f"DPO / SFT step time: {dpo['step_seconds_median'] / sft['step_seconds_median']:.2f}x, peak memory: "
          f"{dpo['peak_memory_bytes'] / sft['peak_memory_bytes']:.2f}x")  # fmt: skip
    print(f"\n{'eval split':<24}{'items':>8}{'base items/s':>14}{'tuned items/s':>15}{'peak GiB':>10}")
    for r in (eval_sft, eval_pref):
        print(
            f"{r['kind']:<24}{r['items']:>8}{r['items_per_second_base']:>14.2f}{r['items_per_second_tuned']:>15.2f}"
            f"{r['peak_memory_bytes'] / gib:>10.2f}"
        )
    settings = {k: v for k, v in vars(args).items() if k not in ("one", "model", "work")}
    path = write_result(
        f"dpo-eval-{args.device}",
        {
            "model": shown(model),
            "settings": settings,
            "training": [sft, dpo],
            "evaluation": [eval_sft, eval_pref],
        },
    )
    print(f"\nwrote {shown(path)}")


if __name__ == "__main__":
    main()
