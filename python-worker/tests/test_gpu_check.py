"""The GPU check's CPU smoke mode (bench/gpu-check.sh --smoke [--family F]): every part runs on the family's tiny model
and lands in the JSON and the markdown table, so the check a GPU machine runs cannot rot between the times a GPU is
lent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# Idefics3 (the default) and one other family (--family), whose flat Qwen-VL patches go through every part too.
@pytest.mark.parametrize("family", ["idefics3", "qwen2_5_vl"])
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
