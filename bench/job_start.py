"""What starting a job costs, with the worker's fork server (jobs/forkserver.py) and without it (a fresh interpreter per
job): the same sequence of small jobs on a fresh worker each way.

python-worker/.venv/bin/python bench/job_start.py                # prep, SFT, evaluate, export; twice; one torch thread
python-worker/.venv/bin/python bench/job_start.py --rounds 3

Each round is a small pipeline on the tiny model (prepare 16 rows, SFT 2 steps, evaluate, export), one job after the
other, as Temporal's activities would send them. Reported per job: request to accepted event (interpreter, imports,
the job's own set-up) and request to end; per way: the wall time of the whole sequence and the CPU time of the worker
and everything it started (its fork server and jobs, reaped), read from getrusage once the worker has exited.
Writes JSON under bench/results/ (job-start-<device>-latest.json).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import grpc
from machine import REPO, shown, write_result  # bench/machine.py: machine, versions, git commit, -latest.json

from vlmflow.v1 import common_pb2, jobs_pb2, worker_pb2_grpc
from vlmflow_worker.fixtures import tiny_model
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.fixtures.worker_process import start_worker_process


def timed(responses) -> tuple[float, float, jobs_pb2.JobEvent]:
    """(request to accepted, request to end, the last event) of one job's stream."""
    sent = time.perf_counter()
    accepted = float("nan")
    last = None
    for response in responses:
        if response.event.WhichOneof("event") == "accepted":
            accepted = time.perf_counter() - sent
        last = response.event
    assert last is not None and last.WhichOneof("event") == "completed", last
    return accepted, time.perf_counter() - sent, last


def pipeline(stub, round_: int, data: Path, model: Path) -> list[dict]:
    """One small pipeline, job after job; returns each job's timings."""
    rows = []
    model_ref = common_pb2.ModelRef(model_id=str(model))
    prep = jobs_pb2.PrepareDatasetRequest(
        job_id=f"prep-{round_}",
        sources=[jobs_pb2.DatasetSource(uri=str(data / "data.jsonl"))],
        model=model_ref,
        eval_fraction=0.25,
        output_uri=f"datasets/{round_}",
    )
    accepted, total, end = timed(stub.PrepareDataset(prep, timeout=600))
    rows.append({"job": "prepare", "round": round_, "to_accepted_s": accepted, "total_s": total})
    dataset = end.completed.artifacts["dataset"]
    train = jobs_pb2.TrainRequest(
        job_id=f"sft-{round_}",
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=model_ref,
        dataset_uri=dataset,
        output_uri=f"runs/sft-{round_}",
        training=jobs_pb2.TrainingConfig(max_steps=2, micro_batch_size=2, logging_steps=1),
    )
    accepted, total, end = timed(stub.Train(train, timeout=600))
    rows.append({"job": "sft", "round": round_, "to_accepted_s": accepted, "total_s": total})
    adapter = end.completed.artifacts["adapter"]
    evaluate = jobs_pb2.EvaluateRequest(
        job_id=f"evaluate-{round_}",
        model=model_ref,
        variants=[jobs_pb2.EvalVariant(name="sft", adapter_uri=adapter)],
        dataset_uri=dataset,
        generation=common_pb2.GenerationConfig(max_new_tokens=4),
        max_samples=4,
        output_uri=f"eval/{round_}",
    )
    accepted, total, _ = timed(stub.Evaluate(evaluate, timeout=600))
    rows.append({"job": "evaluate", "round": round_, "to_accepted_s": accepted, "total_s": total})
    export = jobs_pb2.ExportRequest(
        job_id=f"export-{round_}",
        model=common_pb2.ModelRef(model_id=str(model), adapter_uri=adapter),
        output_uri=f"export/{round_}",
    )
    accepted, total, _ = timed(stub.Export(export, timeout=600))
    rows.append({"job": "export", "round": round_, "to_accepted_s": accepted, "total_s": total})
    return rows


def run_way(fork_server: bool, rounds: int, threads: str, model: Path) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="bench-job-start-"))
    generate("shape_colour", 16, 0, scratch / "data")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {"VLMFLOW_JOB_FORKSERVER": "1" if fork_server else "0", "VLMFLOW_TORCH_THREADS": threads}
    roots = ["--data-root", str(scratch / "data"), "--data-root", str(model)]
    process, listening = start_worker_process(["--artifact-root", str(scratch / "artifacts"), *roots], env)
    port = int(listening["port"])
    started = time.perf_counter()
    try:
        stub = worker_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        rows = [row for r in range(rounds) for row in pipeline(stub, r, scratch / "data", model)]
        wall = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"fork_server": fork_server, "jobs": rows, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="Pipelines per way, one after the other.")
    parser.add_argument("--threads", default="1", help="Torch threads of the jobs (VLMFLOW_TORCH_THREADS).")
    args = parser.parse_args(argv)
    model = tiny_model.build_tiny_model(REPO / ".state" / "models" / "tiny-idefics3")
    ways = [run_way(fork_server, args.rounds, args.threads, model) for fork_server in (True, False)]
    print(f"{'way':<14} {'job':<9} {'round':>5} {'to accepted s':>14} {'total s':>8}")
    for way in ways:
        name = "fork server" if way["fork_server"] else "fresh process"
        for row in way["jobs"]:
            print(f"{name:<14} {row['job']:<9} {row['round']:>5} {row['to_accepted_s']:>14.2f} {row['total_s']:>8.2f}")
        print(f"{name:<14} all jobs: {way['wall_s']:.1f} s wall, {way['cpu_s']:.1f} s CPU (worker and its processes)")
    device = "cpu"
    path = write_result(f"job-start-{device}", {"rounds": args.rounds, "threads": args.threads, "ways": ways})
    print(f"written {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
