"""The GPU check (issue 16): on one CUDA GPU, every figure the product promises, in one command, one JSON and one
markdown table. On CPU (--smoke) the same parts run on the tiny model in about two minutes, so the check cannot rot.

bash bench/gpu-check.sh            # CUDA: SmolVLM-Instruct's architecture, random weights, full image splitting
bash bench/gpu-check.sh --smoke    # CPU, tiny model, few steps (what the test suite runs)
bash bench/gpu-check.sh --family qwen2_5_vl [--smoke]   # another family (bench/families.py): on CUDA its real
                                   # architecture with random weights (Qwen2.5-VL-3B, SmolVLM2-2.2B), else its tiny one

Parts, each in its own processes:
1. SFT (bench/train.py): bf16 LoRA and QLoRA NF4 at micro-batch 4, padded and padding-free, beside plain TRL
   `SFTTrainer`: peak memory, samples/s, tokens/s, MFU, and the ratios to TRL and padded.
2. DPO (bench/dpo.py): the project's DPO job beside plain TRL `DPOTrainer`: step time and peak memory.
3. DPO from an SFT adapter, SIGKILLed after its first checkpoint and resumed, beside an uninterrupted run of the same
   seed: where it resumed, the largest loss difference per step and the largest adapter weight difference.
4. Generate (bench/inference.py) at batch 1, 8 and 32: items/s and answer tokens/s.
5. Export: the SFT adapter merged into the base, and the merged folder loaded back with plain transformers.
6. GRPO (bench/grpo.py): a few GRPO steps (2 prompts x 4 completions a step) beside SFT and DPO steps of as many
   sequences, through the project's jobs: seconds per step and peak memory.

Writes gpu-check-<device>-latest.json and .md into --out (default bench/results/; the parts' own result files go
into a scratch folder so a smoke run never overwrites recorded figures).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from families import ARCHITECTURES, FAMILIES
from machine import REPO, RESULTS, machine_info, shown, write_result

BENCH = REPO / "bench"
STATE = REPO / ".state"
GOALS = {
    "qlora_peak_gib": 10.0,  # QLoRA SFT peak memory at micro-batch 4 with full tiling
    "lora_mfu": 0.35,  # bf16 LoRA
    "x_trl": 1.5,  # samples/s against plain TRL, same loss curve
    "packed_x_padded": 1.4,  # padding-free against padded
}


# ---- the parts --------------------------------------------------------------------------------------------------


def bench_script(script: str, args: list[str], scratch: Path, result: str) -> dict[str, Any]:
    """Runs bench/<script> with its results going to `scratch`; returns its <result>-latest.json."""
    env = {**os.environ, "VLMFLOW_BENCH_RESULTS": str(scratch), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-6000:], file=sys.stderr)
        raise SystemExit(f"{script} failed (exit {done.returncode})")
    return json.loads((scratch / f"{result}-latest.json").read_text())


def job_process(
    kind: str,
    model: Path,
    dataset: Path,
    output: Path,
    steps: int,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> subprocess.Popen:
    """One training job (SFT or DPO) of the product's own code in its own process, as the worker runs it."""
    spec = {
        "kind": kind,
        "model": str(model),
        "dataset": str(dataset),
        "output": str(output),
        "steps": steps,
    } | extra
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, __file__, "--job", json.dumps(spec)], env=environment)


def run_job(spec: dict[str, Any]) -> None:
    """The child side of job_process."""
    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.dpo import DPOTrainConfig, train_dpo
    from vlmflow_worker.train.sft import train_sft

    common = {
        "model_id": spec["model"],
        "dataset_dir": spec["dataset"],
        "output_dir": spec["output"],
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "max_steps": spec["steps"],
        "micro_batch_size": spec["micro_batch"],
        "gradient_accumulation_steps": 1,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "save_steps": spec.get("save_steps", 10_000),
        "eval_steps": 0,
        "logging_steps": 1,
        "max_length": 8192,
        "seed": 0,
    }
    if spec["kind"] == "sft":
        train_sft(SFTConfig(learning_rate=1e-4, **common))
    else:
        train_dpo(DPOTrainConfig(learning_rate=5e-5, beta=0.1, adapter_dir=spec["adapter"], **common))


def losses_by_step(output: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}  # a resumed run logs its redone steps again


def dpo_kill_and_resume(model: Path, data: dict[str, Path], work: Path, steps: int, micro_batch: int) -> dict:
    """DPO continuing an SFT adapter: SIGKILLed once its first checkpoint exists, resumed, compared with an
    uninterrupted run of the same seed (the policy must resume as it was, not from its SFT weights)."""
    import torch
    from safetensors import safe_open

    from vlmflow_worker.faults import HANG_AT_STEP

    save = max(1, steps // 2)
    first = job_process("sft", model, data["sft"], work / "sft", steps, micro_batch=micro_batch)
    if first.wait() != 0:
        raise SystemExit("SFT for the DPO-from-SFT part failed")
    adapter = str(work / "sft" / "adapter")
    dpo = {"adapter": adapter, "micro_batch": micro_batch, "save_steps": save}
    started = time.perf_counter()
    if job_process("dpo", model, data["preference"], work / "dpo-whole", steps, **dpo).wait() != 0:
        raise SystemExit("the uninterrupted DPO run failed")
    whole_seconds = time.perf_counter() - started
    killed = job_process(
        "dpo",
        model,
        data["preference"],
        work / "dpo-killed",
        steps,
        **dpo,
        env={HANG_AT_STEP: str(save + 1)},
    )
    checkpoint = work / "dpo-killed" / "checkpoints" / f"checkpoint-{save}"
    while not checkpoint.is_dir() and killed.poll() is None:
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    if job_process("dpo", model, data["preference"], work / "dpo-killed", steps, **dpo).wait() != 0:
        raise SystemExit("the resumed DPO run failed")
    whole, resumed = (
        losses_by_step(work / "dpo-whole"),
        losses_by_step(work / "dpo-killed"),
    )
    weights = 0.0
    with (
        safe_open(work / "dpo-whole" / "adapter" / "adapter_model.safetensors", "pt") as a,
        safe_open(work / "dpo-killed" / "adapter" / "adapter_model.safetensors", "pt") as b,
    ):
        for name in a.keys():  # noqa: SIM118 (safe_open is not iterable)
            weights = max(
                weights,
                float((a.get_tensor(name).float() - b.get_tensor(name).float()).abs().max()),
            )
    return {
        "steps": steps,
        "killed_after_checkpoint": save,
        "steps_compared": sorted(set(whole) & set(resumed)),
        "max_loss_difference": max(abs(whole[s] - resumed[s]) for s in whole if s in resumed),
        "max_adapter_weight_difference": weights,
        "uninterrupted_seconds": round(whole_seconds, 1),
        "device_deterministic": not torch.cuda.is_available(),  # bf16 kernels on CUDA may differ in the last bits
    }


def export_and_load(model: Path, adapter: Path, work: Path) -> dict[str, Any]:
    """The product's export (merge) of the SFT adapter, then the folder loaded back with plain transformers."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmflow_worker.export import export
    from vlmflow_worker.models import ModelSpec, default_device

    started = time.perf_counter()
    out = export(
        ModelSpec(str(model), adapter=str(adapter)),
        work / "merged",
        device=default_device(),
    )
    merge_seconds = time.perf_counter() - started
    started = time.perf_counter()
    loaded = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in loaded.parameters())
    return {
        "merge_seconds": round(merge_seconds, 1),
        "load_seconds": round(time.perf_counter() - started, 1),
        "parameters": parameters,
        "weights_gib": round(sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**30, 3),
    }


# ---- the report -------------------------------------------------------------------------------------------------


def goals(sft: dict[str, Any], smoke: bool) -> list[dict[str, Any]]:
    """Each goal with what was measured; on the CPU smoke run the goals do not apply (tiny model, fp32)."""
    summary = sft["summary"]

    def mean(variant: str) -> float:
        s = summary[variant]
        return (s["samples_per_second_min"] + s["samples_per_second_max"]) / 2

    rows = []
    if "project-qlora" in summary:
        peak = summary["project-qlora"]["peak_memory_gib_max"]
        rows.append(
            {
                "goal": "QLoRA SFT peak memory <= 10 GiB",
                "measured": f"{peak:.2f} GiB",
                "met": peak <= 10,
            }
        )
    mfu = summary["project-lora"]["mfu_mean"]
    rows.append(
        {
            "goal": "bf16 LoRA MFU >= 35 %",
            "measured": f"{mfu:.1%}",
            "met": mfu >= GOALS["lora_mfu"],
        }
    )
    vs_trl = mean("project-lora") / mean("trl-lora")
    rows.append(
        {
            "goal": ">= 1.5x plain TRL samples/s",
            "measured": f"{vs_trl:.2f}x",
            "met": vs_trl >= GOALS["x_trl"],
        }
    )
    packed = mean("project-lora-packed") / mean("project-lora")
    rows.append(
        {
            "goal": "padding-free >= 1.4x padded",
            "measured": f"{packed:.2f}x",
            "met": packed >= GOALS["packed_x_padded"],
        }
    )
    if smoke:
        for row in rows:
            row["met"] = None  # not a claim: the goals are for the real architecture on a GPU
    return rows


def grpo_table(runs: dict[str, Any]) -> list[str]:
    return [
        "| GRPO beside SFT and DPO | step seconds (median) | x SFT | peak GiB |",
        "|---|---|---|---|",
        *(
            f"| {kind.upper()} | {r['step_seconds_median']:.3f} | "
            f"{r['step_seconds_median'] / runs['sft']['step_seconds_median']:.2f} | "
            f"{r['peak_memory_bytes'] / 2**30:.2f} |"
            for kind, r in runs.items()
        ),
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    device, sft = result["device"], result["sft"]["summary"]
    mode = "CPU smoke (tiny model; the goals do not apply)" if result["smoke"] else device
    export = result["export"]
    lines = [
        f"# GPU check — {result['machine'].get('gpu', 'CPU')} — {result['machine']['date']}",
        "",
        f"Model: {result['model']}. Mode: {mode}. Total {result['seconds']:.0f} s.",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        *(
            f"| {g['goal']} | {g['measured']} | {'n/a' if g['met'] is None else 'yes' if g['met'] else 'NO'} |"
            for g in result["goals"]
        ),
        "",
        "| SFT variant | samples/s | tokens/s | padding | peak GiB | MFU | x TRL |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {s['samples_per_second_min']:.2f}–{s['samples_per_second_max']:.2f} | "
            f"{s['tokens_per_second_mean']:.0f} | {s['padding_share']:.1%} | {s['peak_memory_gib_max']:.2f} | "
            f"{s['mfu_mean']:.1%} | {s['x_trl']:.2f} |"
            for name, s in sft.items()
        ),
        "",
        "| DPO variant | step seconds | peak GiB |",
        "|---|---|---|",
        *(
            f"| {name} | {s['step_seconds_median_min']:.3f}–{s['step_seconds_median_max']:.3f} | "
            f"{s['peak_memory_gib_max']:.2f} |"
            for name, s in result["dpo"]["summary"].items()
        ),
        "",
        "| DPO from SFT, killed and resumed | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["dpo_resume"].items()),
        "",
        "| Generate batch | items/s | answer tokens/s |",
        "|---|---|---|",
        *(
            f"| {r['batch_size']} | {r['items_per_second']:.2f} | {r['answer_tokens_per_second']:.1f} |"
            for r in result["generate"]["rows"]
        ),
        "",
        *(grpo_table(result["grpo"]) if result["grpo"] else []),
        (
            f"Export: merged in {export['merge_seconds']} s, {export['weights_gib']} GiB, loaded back with plain "
            f"transformers in {export['load_seconds']} s."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, tiny model, few steps: proves the check runs.",
    )
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="idefics3",
        help="Model family: its real architecture with random weights on CUDA (bench/families.py), its tiny fixture "
        "with --smoke.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=STATE / "gpu-check")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: one training job in this process
    args = parser.parse_args(argv)
    if args.job:
        run_job(json.loads(args.job))
        return 0

    import shutil

    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --smoke for the CPU check")
    started = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)  # checkpoints left by an earlier check would be resumed
    scratch = args.work / "results"
    # Steps and sizes sized for one H200 in under 8 minutes, or a 2-core CPU in about two.
    steps, warmup, rows = (4, 1, 24) if args.smoke else (12, 3, 160)
    family = args.family
    suffix = "" if family == "idefics3" else f"-{family}"  # the parts' result names (Idefics3 keeps its own)
    sized = [
        "--device",
        device,
        "--family",
        family,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--repeats",
        "1",
    ]
    print("1/6 SFT variants", flush=True)
    sft = bench_script("train.py", [*sized, "--rows", str(rows), "--work", str(args.work / "train")], scratch,
                       f"train-{device}{suffix}")  # fmt: skip
    print("2/6 DPO variants", flush=True)
    dpo = bench_script("dpo.py", [*sized, "--rows", str(rows // 2), "--work", str(args.work / "dpo")], scratch,
                       f"dpo-{device}{suffix}")  # fmt: skip

    print("3/6 DPO from SFT, killed and resumed", flush=True)
    sys.path.insert(0, str(BENCH))
    from dpo_eval import datasets, model_folder

    model = model_folder(device, family)
    data = datasets(args.work / "data", rows=16 if args.smoke else 64, held_out=4)
    resume = dpo_kill_and_resume(model, data, args.work / "resume", steps=4 if args.smoke else 8, micro_batch=4)

    print("4/6 Generate", flush=True)
    batches = "1,8" if args.smoke else "1,8,32"
    generate_args = [
        "--device",
        device,
        "--batch-sizes",
        batches,
        "--items",
        "8" if args.smoke else "64",
    ]
    generate_args += ["--out", str(scratch), "--family", family] + ([] if args.smoke else ["--real-arch"])
    if args.smoke:
        name = f"tiny-{family}"
    else:
        name = "smolvlm-instruct-arch" if family == "idefics3" else f"{ARCHITECTURES[family]}-arch"
    generate = bench_script("inference.py", generate_args, scratch, f"inference-{name}-{device}")

    print("5/6 export", flush=True)
    exported = export_and_load(model, args.work / "resume" / "sft" / "adapter", args.work)

    print("6/6 GRPO beside SFT and DPO (bench/grpo.py)", flush=True)
    grpo_args = ["--device", device, "--family", family, "--warmup", "1", "--micro-batch", "8", "--generations", "4"]
    grpo_args += ["--steps", "3", "--rows", "16"] if args.smoke else ["--steps", "6", "--rows", "64"]
    grpo = bench_script("grpo.py", grpo_args, scratch, f"grpo-{device}{suffix}")

    result: dict[str, Any] = {
        "device": device,
        "family": family,
        "smoke": args.smoke,
        "model": sft["model"],
        "sft": {
            k: sft[k]
            for k in (
                "summary",
                "matmul_tflops",
                "micro_batch",
                "steps",
                "warmup_steps",
            )
        },
        "dpo": {k: dpo[k] for k in ("summary",) if k in dpo},
        "dpo_resume": resume,
        "generate": {"rows": generate["rows"]},
        "export": exported,
        "grpo": {
            kind: {k: run[k] for k in ("step_seconds_median", "peak_memory_bytes")}
            for kind, run in grpo["runs"].items()
        },
    }
    result["goals"] = goals(sft, args.smoke)
    result["seconds"] = round(time.perf_counter() - started, 1)
    path = write_result(f"gpu-check-{device}{suffix}", result, args.out)
    table = markdown({**result, "machine": machine_info()})
    (args.out / f"gpu-check-{device}{suffix}-latest.md").write_text(table)
    print("\n" + table)
    print(f"wrote {shown(path)} and gpu-check-{device}{suffix}-latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
