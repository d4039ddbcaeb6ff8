"""Dataset prep throughput: rows/s of the PrepareDataset job on synthetic rows with images (shape colours), with the
job's process pool off (1 process) and on (--processes N, default every core), each --repeats times.

python-worker/.venv/bin/python bench/prep.py                    # 10,000 rows, tiny model's processor
python-worker/.venv/bin/python bench/prep.py --rows 2000 --processes 2

Every run prepares into a fresh folder (no cache hit) and the outputs of all runs must be identical (train.jsonl,
eval.jsonl, stats.json and the image names), which the script checks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from machine import REPO, shown, write_result

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.fixtures import tiny_model
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.prep import job as prep
from vlmflow_worker.serve.settings import WorkerSettings


def digest(folder: Path) -> str:
    """The prepared content: the row files, the stats and the stored image names."""
    h = hashlib.sha256()
    for name in ("train.jsonl", "eval.jsonl", "stats.json"):
        h.update((folder / name).read_bytes())
    h.update("\n".join(sorted(p.name for p in (folder / "images").iterdir())).encode())
    return h.hexdigest()[:16]


def prepare_once(work: Path, data: Path, model: Path, processes: int, run: int) -> tuple[float, str, int]:
    settings = WorkerSettings(host="127.0.0.1", port=0, artifact_root=work, data_roots=[model.parent], job_capacity=1)
    request = jobs_pb2.PrepareDatasetRequest(
        job_id=f"bench-prep-{run}",
        sources=[jobs_pb2.DatasetSource(uri=str(data), layout=jobs_pb2.DATASET_LAYOUT_MESSAGES)],
        model=common_pb2.ModelRef(model_id=str(model)),
        max_length=2048,
        eval_fraction=0.1,
        output_uri=f"prepared/{run}",
    )
    folder = work / "jobs" / request.job_id
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[prep.PROCESSES_ENV] = str(processes)
    started = time.perf_counter()
    result = prep.run(request, JobContext(request.job_id, folder, settings))
    seconds = time.perf_counter() - started
    out = Path(result.artifacts["dataset"])
    return seconds, digest(out), int(result.metrics.get("rows_in", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="Pool size of the 'on' runs.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / ".state" / "bench-prep")
    args = parser.parse_args(argv)

    shutil.rmtree(args.work, ignore_errors=True)
    model = tiny_model.build_tiny_model(REPO / ".state" / "models" / "tiny-idefics3")
    data = generate("shape_colour", args.rows, 0, args.work / "data")
    rows, digests, run = [], set(), 0
    for repeat in range(args.repeats):
        for processes in (1, args.processes):
            run += 1
            seconds, content, rows_in = prepare_once(args.work, data, model, processes, run)
            digests.add(content)
            rows.append(
                {
                    "processes": processes,
                    "repeat": repeat,
                    "seconds": round(seconds, 2),
                    "rows_per_second": round(args.rows / seconds, 1),
                    "output_digest": content,
                    "load_average_1m": round(os.getloadavg()[0], 2),
                }
            )
            print(f"{processes} process(es) #{repeat}: {args.rows / seconds:8.1f} rows/s ({seconds:.1f} s)", flush=True)
            shutil.rmtree(args.work / "prepared" / str(run), ignore_errors=True)
    if len(digests) != 1:
        raise SystemExit(f"prepared outputs differ between runs: {sorted(digests)}")

    print(f"\n{args.rows} rows, tiny model's processor; identical outputs in every run ({digests.pop()})")
    print(f"{'processes':>9} | {'rows/s min':>10} | {'rows/s max':>10}")
    summary = {}
    for processes in sorted({r["processes"] for r in rows}):
        rates = [r["rows_per_second"] for r in rows if r["processes"] == processes]
        summary[str(processes)] = {"rows_per_second_min": min(rates), "rows_per_second_max": max(rates)}
        print(f"{processes:>9} | {min(rates):>10.1f} | {max(rates):>10.1f}")
    out = write_result("prep", {"rows": args.rows, "summary": summary, "runs": rows})
    print(f"\nwrote {shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
