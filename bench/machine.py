"""What every Python benchmark records beside its numbers (machine, versions, git commit, date), as bench/machine.ts
does for the TypeScript ones; and where the result goes.

    from machine import write_result   # bench/ is on sys.path when a bench script runs
    write_result("train-tiny-cpu", {...})  # bench/results/train-tiny-cpu-latest.json + a timestamped copy

The timestamped copies are gitignored (`*-20YY-*.json`); `<name>-latest.json` is the committed record.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# VLMFLOW_BENCH_RESULTS: where a driver (bench/gpu_check.py) collects the parts it runs, away from the record.
RESULTS = Path(os.environ.get("VLMFLOW_BENCH_RESULTS") or REPO / "bench" / "results")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Host, CPU, memory, GPU, load average, library versions and the git commit (dirty or not)."""
    import torch

    from vlmflow_worker.serve.health import library_versions

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": f"{os.cpu_count()} x {_cpu_model()}",
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        # Timings on a shared machine are only as good as its load: recorded so a reader can judge.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return info


def write_result(name: str, result: dict[str, Any], out: Path = RESULTS) -> Path:
    """Writes `<out>/<name>-<timestamp>.json` and `<out>/<name>-latest.json`; returns the first path."""
    out.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"benchmark": name, "machine": machine_info(), **result}, indent=2) + "\n"
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    path = out / f"{name}-{stamp}.json"
    path.write_text(body)
    (out / f"{name}-latest.json").write_text(body)
    return path


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
