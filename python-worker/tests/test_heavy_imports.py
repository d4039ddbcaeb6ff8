"""The server imports heavy modules from three threads (event loop, job warm-up, Generate); through one lock, so
transformers' lazy module never sees two at once. Without the lock the script below fails every time here with
`cannot import name 'Trainer' from 'transformers'` (the 2026-12-01 fault-test flake)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmflow_worker"

RACE = """
import threading
from vlmflow_worker import heavy_imports
from vlmflow_worker.jobs.kinds import ENTRY_MODULES
errors = []
def job_modules():  # what the registry's warm-up thread imports
    try:
        for module in ENTRY_MODULES.values():
            heavy_imports.import_module(module)
    except Exception as err:
        errors.append(repr(err))
def generate():  # what the Generate thread imports
    try:
        for module in ("vlmflow_worker.faults", "vlmflow_worker.infer.generate", "vlmflow_worker.models"):
            heavy_imports.import_module(module)
    except Exception as err:
        errors.append(repr(err))
threads = [threading.Thread(target=job_modules), threading.Thread(target=generate)]
for t in threads: t.start()
for t in threads: t.join()
print(errors or "ok")
"""


def test_two_threads_import_the_job_modules_and_generate_without_an_import_error() -> None:
    for _ in range(3):  # a fresh interpreter each time: the race is in the first import
        out = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "ok", out.stdout


def test_the_server_imports_job_and_model_modules_only_through_the_lock() -> None:
    server_side = [*PACKAGE.glob("serve/*.py"), PACKAGE / "jobs" / "registry.py", PACKAGE / "jobs" / "kinds.py"]
    offenders = [
        f"{p.relative_to(PACKAGE)}:{n}"
        for p in server_side
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"importlib\.import_module\(|^\s+from vlmflow_worker\.(train|evaluate|prep|infer|models)", line)
    ]
    assert offenders == []
