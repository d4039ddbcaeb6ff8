"""The GPU check's CPU smoke mode (bench/gpu-check.sh --smoke [--family F]): every part runs on the family's tiny model
and lands in the JSON and the markdown table, so the check a GPU machine runs cannot rot between the times a GPU is
lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# Idefics3, the default family. A smoke run is about 15 Python processes (3 minutes of one core, mostly imports), so
# the other families get only the part with family-specific bench code (below); their jobs (SFT, packed SFT, DPO,
# GRPO, evaluate, export) run per family in test_train_families.py.
@pytest.mark.parametrize("family", ["idefics3"])
def test_the_gpu_check_runs_every_part_in_smoke_mode(tmp_path: Path, family: str) -> None:
    command = ["bash", str(REPO / "bench" / "gpu-check.sh"), "--smoke", "--family", family, "--out", str(tmp_path)]
    done = subprocess.run(
        [*command, "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    name = "gpu-check-cpu" if family == "idefics3" else f"gpu-check-cpu-{family}"
    result = json.loads((tmp_path / f"{name}-latest.json").read_text())
    assert result["family"] == family and result["model"] == f"tiny-{family}"
    sft = result["sft"]["summary"]
    assert set(sft) == {"project-lora", "project-lora-packed", "trl-lora"}
    assert all(s["samples_per_second_min"] > 0 and s["peak_memory_gib_max"] > 0 for s in sft.values())
    assert set(result["dpo"]["summary"]) == {"project", "trl"}
    resume = result["dpo_resume"]
    # Deterministic on CPU: the resumed DPO-from-SFT run is the uninterrupted one, step for step.
    assert resume["killed_after_checkpoint"] == 2 and resume["steps_compared"] == [1, 2, 3, 4]
    assert resume["max_loss_difference"] < 1e-4 and resume["max_adapter_weight_difference"] < 1e-5
    assert [r["batch_size"] for r in result["generate"]["rows"]] == [1, 8]
    assert all(r["items_per_second"] > 0 for r in result["generate"]["rows"])
    assert result["export"]["parameters"] > 0 and result["export"]["weights_gib"] > 0
    assert [g["met"] for g in result["goals"]] == [None, None, None]  # goals are for the GPU, not claimed here
    table = (tmp_path / f"{name}-latest.md").read_text()
    assert set(result["grpo"]) == {"sft", "dpo", "grpo"}  # GRPO steps beside SFT and DPO steps
    assert all(r["step_seconds_median"] > 0 and r["peak_memory_bytes"] > 0 for r in result["grpo"].values())
    assert "| GRPO beside SFT and DPO |" in table
    for heading in (
        "| goal |",
        "| SFT variant |",
        "| DPO variant |",
        "| DPO from SFT",
        "| Generate batch |",
        "Export:",
    ):
        assert heading in table


def test_the_sft_part_counts_a_flat_patch_familys_vision_tokens(tmp_path: Path) -> None:
    """bench/train.py, the GPU check's SFT part, on Qwen2.5-VL's tiny model: its flat patches (one vision token each,
    no tiles) are counted into tokens/s and MFU, and plain TRL runs beside the project's trainer."""
    args = ["--device", "cpu", "--family", "qwen2_5_vl", "--steps", "3", "--warmup", "1", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train.py"), *args, "--rows", "16", "--work", str(tmp_path / "work")],
        env={**os.environ, "VLMFLOW_BENCH_RESULTS": str(tmp_path), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    result = json.loads((tmp_path / "train-cpu-qwen2_5_vl-latest.json").read_text())
    assert result["family"] == "qwen2_5_vl"
    summary = result["summary"]
    assert set(summary) == {"project-lora", "project-lora-packed", "trl-lora"}
    for variant in summary.values():
        assert variant["tokens_per_second_mean"] > 0 and variant["mfu_mean"] > 0
