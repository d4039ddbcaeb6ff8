"""Generate items/s with 1, 4 and 16 concurrent callers against a real worker process (issue 16: the batching queue).

python-worker/.venv/bin/python bench/generate_callers.py                  # tiny model, the worker's defaults
python-worker/.venv/bin/python bench/generate_callers.py --threads 1      # worker with one torch thread
python-worker/.venv/bin/python bench/generate_callers.py --wait-ms 0      # without waiting for requests in prep

Starts `python -m vlmflow_worker serve --port 0` on the tiny model; each caller is a thread sending one Generate
request of one photo (caption preset, inline JPEG, greedy, --new-tokens at most) at a time, the next as soon as the
answer is back, until --items have been answered for that row. One caller is the old behaviour (one item per
generate() call); with more, the worker merges concurrent requests into shared calls. Every row answers the same
items, and greedy answers are checked identical across rows. A warm-up request loads the model first. Prints a
table (items/s, answer tokens/s, request latency p50/p95, x one caller); writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc
from machine import (
    REPO,
    shown,
    write_result,
)  # bench/machine.py: machine, versions, git commit, -latest.json
from PIL import Image

from vlmflow.v1 import common_pb2, generate_pb2, worker_pb2, worker_pb2_grpc
from vlmflow_worker.fixtures import tiny_model
from vlmflow_worker.fixtures.worker_process import start_worker_process

DEMO_PHOTOS = REPO.parent / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data"


def photos() -> list[bytes]:
    """The demo photos when ../shared/data is there, else three synthetic ones."""
    if DEMO_PHOTOS.is_dir():
        return [(DEMO_PHOTOS / f"{i}.jpg").read_bytes() for i in (1, 2, 3)]
    sources = []
    for colour in ((200, 40, 40), (40, 160, 60), (40, 60, 200)):
        buffer = io.BytesIO()
        Image.new("RGB", (480, 320), colour).save(buffer, format="JPEG")
        sources.append(buffer.getvalue())
    return sources


CALLS: list[int] = []  # rows of each generate() call, from the worker's debug log ("generate call")


def _count_call(line: str) -> None:
    if '"generate call"' in line:
        CALLS.append(json.loads(line)["rows"])


def request(model_id: str, image: bytes, index: int, new_tokens: int) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=model_id),
        items=[
            generate_pb2.GenerateItem(
                id=str(index),
                task=generate_pb2.TASK_CAPTION,
                images=[common_pb2.Image(data=image)],
            )
        ],
        generation=common_pb2.GenerationConfig(max_new_tokens=new_tokens),
    )


def run_callers(
    stub: worker_pb2_grpc.WorkerServiceStub,
    model_id: str,
    images: list[bytes],
    callers: int,
    items: int,
    new: int,
) -> dict:
    """`callers` threads answer items 0..items-1 between them, one request at a time each."""
    answers: dict[int, tuple[str, int]] = {}
    latencies: list[float] = []
    next_item = iter(range(items))
    lock = threading.Lock()
    start = threading.Barrier(callers + 1)

    def caller() -> None:
        start.wait()
        while True:
            with lock:
                index = next(next_item, None)
            if index is None:
                return
            sent = time.perf_counter()
            reply = stub.Generate(request(model_id, images[index % len(images)], index, new), timeout=600)
            with lock:
                latencies.append(time.perf_counter() - sent)
                answers[index] = (reply.results[0].text, reply.results[0].answer_tokens)

    calls_before = len(CALLS)
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    time.sleep(0.2)  # the worker's last log lines
    calls = CALLS[calls_before:]
    latencies.sort()
    tokens = sum(n for _, n in answers.values())
    return {
        "callers": callers,
        "items": items,
        "seconds": round(seconds, 3),
        "items_per_second": round(items / seconds, 2),
        "answer_tokens_per_second": round(tokens / seconds, 1),
        "answer_tokens_per_item": round(tokens / items, 2),
        "generate_calls": len(calls),
        "rows_per_call": round(statistics.mean(calls), 2) if calls else None,
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 4),
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", default="1,4,16", help="Concurrent callers per row.")
    parser.add_argument(
        "--items",
        type=int,
        default=96,
        help="Items answered per row (a multiple of 16 is fairest).",
    )
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=32,
        help="max_new_tokens (greedy; answers may end sooner).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads in the worker (0 = its default).",
    )
    parser.add_argument("--wait-ms", type=float, help="VLMFLOW_GENERATE_BATCH_WAIT_MS for the worker.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Rows measured per caller count (the best is kept).",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    model_id = str(tiny_model.build_tiny_model(REPO / ".state" / "models" / "tiny-idefics3"))
    env = {}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op thread count in the worker
    if args.wait_ms is not None:
        env["VLMFLOW_GENERATE_BATCH_WAIT_MS"] = str(args.wait_ms)
    process, listening = start_worker_process(
        ["--artifact-root", str(REPO / ".state" / "artifacts")], env, on_line=_count_call, log_level="DEBUG"
    )
    port = int(listening["port"])
    try:
        stub = worker_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        images = photos()
        run_callers(stub, model_id, images, 4, 16, args.new_tokens)  # warm-up: model load, first calls
        rows = []
        for callers in [int(c) for c in args.callers.split(",")]:
            runs = [
                run_callers(stub, model_id, images, callers, args.items, args.new_tokens) for _ in range(args.repeats)
            ]
            row = max(runs, key=lambda r: r["items_per_second"])
            row["items_per_second_runs"] = [r["items_per_second"] for r in runs]
            rows.append(row)
            print(
                f"{callers:>3} callers: {row['items_per_second']:>8.2f} items/s  "
                f"{row['answer_tokens_per_second']:>8.1f} answer tokens/s  (runs {row['items_per_second_runs']})",
                flush=True,
            )
    finally:
        process.terminate()
        process.wait(timeout=30)

    same = all(row["answers"] == rows[0]["answers"] for row in rows)
    base = rows[0]["items_per_second"]
    print(f"\ntiny-idefics3 through a worker on {os.cpu_count()} CPUs; {args.items} one-photo requests per row")
    print(
        f"{'callers':>7} | {'items/s':>8} | {'answer tok/s':>12} | {'tok/item':>8} | {'rows/call':>9} | "
        f"{'p50 s':>6} | {'p95 s':>6} | x 1"
    )
    for row in rows:
        print(
            f"{row['callers']:>7} | {row['items_per_second']:>8.2f} | {row['answer_tokens_per_second']:>12.1f} | "
            f"{row['answer_tokens_per_item']:>8.2f} | {row['rows_per_call']:>9} | {row['latency_p50_s']:>6.3f} | "
            f"{row['latency_p95_s']:>6.3f} | {row['items_per_second'] / base:.2f}"
        )
    print(f"greedy answers identical in every row: {same}")
    for row in rows:
        del row["answers"]
    result = {
        "model": "tiny-idefics3",
        "device": "cpu",
        "new_tokens": args.new_tokens,
        "worker_torch_threads": args.threads or "default",
        "wait_ms": args.wait_ms if args.wait_ms is not None else "default",
        "answers_identical": same,
        "rows": rows,
    }
    name = "generate-callers-tiny-idefics3-cpu" + (f"-threads-{args.threads}" if args.threads else "")
    out = write_result(name, result, args.out)
    print(f"\nwrote {shown(out)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
