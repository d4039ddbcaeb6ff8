"""Dataset prep rows/s and SFT throughput through the worker's own code (prep/job.py, train/sft.py).

python-worker/.venv/bin/python bench/prep_sft.py --threads 1      # CPU: 2,000 synthetic rows, tiny model
python-worker/.venv/bin/python bench/prep_sft.py --device cuda    # + SmolVLM-Instruct architecture, random weights

Throughput is measured after the first logging window (warm-up excluded). CPU: synthetic rows/s, prep rows/s
(images checked and stored, token lengths counted with the tiny model's processor, split, stats) for 2,000 rows,
then the tiny model's SFT steps/s, samples/s, tokens/s and peak RSS.
CUDA: the model has SmolVLM-Instruct's published config (fixtures/architectures.py) and its processor's real
sizes (longest edge 1536, 384 px tiles, 81 tokens per tile): every synthetic image is 16 tiles + the global one,
1,377 image tokens. Micro-batch 4, gradient checkpointing, bf16 LoRA and QLoRA NF4 through train/sft.py, each beside
a plain TRL `SFTTrainer` (TRL's own collator, loss on every token) on the same rows, each variant in its own process.
Prints a table; writes bench/results/prep-sft-<device>-latest.json (machine, versions, git commit: bench/machine.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import (
    REPO,
    shown,
    write_result,
)  # bench/ is on sys.path when this script runs

STATE = REPO / ".state"


def prepare(model: Path, data: Path, work: Path, max_length: int) -> tuple[Path, dict[str, Any]]:
    """Runs the PrepareDataset job body in this process; returns the dataset folder and its timing."""
    from vlmflow.v1 import common_pb2, jobs_pb2
    from vlmflow_worker.jobs.context import JobContext
    from vlmflow_worker.prep.job import run
    from vlmflow_worker.serve.settings import WorkerSettings

    settings = WorkerSettings(host="127.0.0.1", port=0, artifact_root=work, data_roots=[data.parent])
    request = jobs_pb2.PrepareDatasetRequest(
        job_id="bench-prep",
        sources=[jobs_pb2.DatasetSource(uri=str(data / "data.jsonl"))],
        model=common_pb2.ModelRef(model_id=str(model)),
        max_length=max_length,
        eval_fraction=0.05,
        output_uri="datasets",
    )
    (work / "jobs" / "bench-prep").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = run(request, JobContext("bench-prep", work / "jobs" / "bench-prep", settings))
    seconds = time.perf_counter() - started
    rows = result.metrics["rows_in"]
    timing = {
        "rows": rows,
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "cached": result.cached,
    }
    return Path(result.artifacts["dataset"]), timing | {"tokens_mean": result.metrics["tokens_mean"]}


def run_variant(variant: str, model: Path, dataset: Path, steps: int, micro_batch: int) -> dict[str, Any]:
    """One training variant in this process: project-lora, project-qlora, trl-lora or trl-qlora."""
    import torch

    quantization = "nf4" if variant.endswith("qlora") else "none"
    on_cuda = torch.cuda.is_available()
    if variant.startswith("project"):
        from vlmflow_worker.train.config import SFTConfig
        from vlmflow_worker.train.sft import train_sft

        output = Path(tempfile.mkdtemp(prefix="bench-sft-"))
        config = SFTConfig(
            model_id=str(model),
            dataset_dir=str(dataset),
            output_dir=str(output),
            quantization=quantization,
            max_steps=steps,
            micro_batch_size=micro_batch,
            gradient_accumulation_steps=1,
            gradient_checkpointing=on_cuda,
            logging_steps=max(1, steps // 10),
            save_steps=10 * steps,
            eval_steps=0,
            max_length=4096,
        )
        started = time.perf_counter()
        result = train_sft(config)
        seconds = time.perf_counter() - started
        log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
        windows = [e for e in log if "samples_per_second" in e][1:] or [e for e in log if "samples_per_second" in e]
        return {
            "variant": variant,
            "steps_per_second": steps / result.metrics["train_runtime"],
            "samples_per_second": sum(e["samples_per_second"] for e in windows) / len(windows),
            "tokens_per_second": sum(e["tokens_per_second"] for e in windows) / len(windows),
            "peak_memory_bytes": max(e["peak_memory_bytes"] for e in windows),
            "wall_seconds": seconds,
            "final_loss": log[-2].get("loss") if len(log) > 1 else None,
        }
    return run_trl(variant, model, dataset, steps, micro_batch, quantization)


def run_trl(
    variant: str,
    model_dir: Path,
    dataset: Path,
    steps: int,
    micro_batch: int,
    quantization: str,
):
    """A plain TRL SFTTrainer run: TRL's collator and defaults, our model loading and LoRA settings."""
    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from transformers import TrainerCallback

    from vlmflow_worker.models import ModelSpec, load_model
    from vlmflow_worker.train.config import SFTConfig as OurConfig
    from vlmflow_worker.train.sft import lora_targets

    on_cuda = torch.cuda.is_available()
    model, processor = load_model(ModelSpec(str(model_dir), quantization=quantization))
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    data = datasets.Dataset.from_list(
        [
            {
                "messages": r["messages"],
                "images": [str(dataset / p) for p in r["images"]],
            }
            for r in rows
        ]
    ).cast_column("images", datasets.Sequence(datasets.Image()))
    ours = OurConfig(model_id=str(model_dir))
    lora = LoraConfig(
        r=ours.lora_r,
        lora_alpha=ours.lora_alpha,
        lora_dropout=ours.lora_dropout,
        target_modules=lora_targets(ours, model),
        task_type="CAUSAL_LM",
    )
    args = trl.SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=ours.learning_rate,
        max_length=None,  # never cut image tokens
        gradient_checkpointing=on_cuda,
        bf16=on_cuda,
        use_cpu=not on_cuda,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=processor,
        peft_config=lora,
    )
    collate, seen = trainer.data_collator, {"tokens": 0}

    def counting(batch):
        out = collate(batch)
        seen["tokens"] += int(out["attention_mask"].sum())
        return out

    trainer.data_collator = counting

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), seen["tokens"]))

    clock = Clock()
    trainer.add_callback(clock)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    (t0, k0), (t1, k1) = (
        clock.marks[0],
        clock.marks[-1],
    )  # the first step (compile, warm-up) left out
    measured = len(clock.marks) - 1
    import resource

    peak = torch.cuda.max_memory_allocated() if on_cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "variant": variant,
        "steps_per_second": measured / (t1 - t0),
        "samples_per_second": measured * micro_batch / (t1 - t0),
        "tokens_per_second": (k1 - k0) / (t1 - t0),
        "peak_memory_bytes": peak,
        "final_loss": result.metrics.get("train_loss"),
    }


def cuda_model() -> Path:
    """SmolVLM-Instruct's architecture with random weights, saved once as a local model folder."""
    from inference import smolvlm_instruct_folder

    return smolvlm_instruct_folder()


def in_subprocess(
    variant: str, model: Path, dataset: Path, steps: int, micro_batch: int, threads: int
) -> dict[str, Any]:
    """Each variant in its own process, so one's peak memory and allocator state do not colour the next."""
    command = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--model",
        str(model),
        "--dataset",
        str(dataset),
    ]
    command += [
        "--steps",
        str(steps),
        "--micro-batch",
        str(micro_batch),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(command, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        return {
            "variant": variant,
            "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed",
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.variant:  # a child of in_subprocess
        print(json.dumps(run_variant(args.variant, args.model, args.dataset, args.steps, args.micro_batch)))
        return 0

    from vlmflow_worker.fixtures import tiny_model
    from vlmflow_worker.fixtures.synthetic import generate

    work = Path(tempfile.mkdtemp(prefix="bench-prep-sft-"))
    started = time.perf_counter()
    generate("shape_colour", args.rows, 0, work / "data")
    synthetic = {
        "rows": args.rows,
        "rows_per_second": args.rows / (time.perf_counter() - started),
    }
    tiny = tiny_model.build_tiny_model(STATE / "models" / "tiny-idefics3")
    dataset, prep = prepare(tiny, work / "data", work / "store", 2048)
    result: dict[str, Any] = {
        "synthetic": synthetic,
        "prep_tiny": prep,
        "sft": [],
        "threads": args.threads,
    }
    variants = [(f"cpu-tiny-{v}", v, tiny, dataset) for v in ("project-lora", "trl-lora")]
    if args.device == "cuda":
        model = cuda_model()
        big, result["prep_smolvlm_arch"] = prepare(model, work / "data", work / "store-smolvlm", 4096)
        variants = [
            (f"cuda-smolvlm-arch-{v}", v, model, big)
            for v in ("project-lora", "trl-lora", "project-qlora", "trl-qlora")
        ]
    for name, variant, model, data in variants:
        entry = in_subprocess(variant, model, data, args.steps, args.micro_batch, args.threads)
        result["sft"].append(
            {
                "name": name,
                "micro_batch": args.micro_batch,
                "steps": args.steps,
                **entry,
            }
        )

    print(f"{'what':34} {'rows/s':>9}")
    print(f"{'synthetic rows':34} {synthetic['rows_per_second']:9.1f}")
    for key in ("prep_tiny", "prep_smolvlm_arch"):
        if key in result:
            print(f"{key + ' (' + str(int(result[key]['rows'])) + ' rows)':34} {result[key]['rows_per_second']:9.1f}")
    print(f"\n{'sft variant':34} {'steps/s':>8} {'samples/s':>10} {'tokens/s':>10} {'peak MiB':>9}")
    for e in result["sft"]:
        if "error" in e:
            print(f"{e['name']:34} error: {e['error']}")
            continue
        print(
            f"{e['name']:34} {e['steps_per_second']:8.2f} {e['samples_per_second']:10.2f} "
            f"{e['tokens_per_second']:10.0f} {e['peak_memory_bytes'] / 2**20:9.0f}"
        )
    path = write_result(f"prep-sft-{args.device}", result)
    print(f"\nwritten: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
