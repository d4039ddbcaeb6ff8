"""Inference throughput: items/s and answer tokens/s at batch sizes 1, 4 and 16, through the worker's Generate path.

python-worker/.venv/bin/python bench/inference.py                       # tiny model, CPU
python-worker/.venv/bin/python bench/inference.py --threads 1           # same, one torch thread
python-worker/.venv/bin/python bench/inference.py --smolvlm-arch        # SmolVLM-Instruct's architecture, CUDA
python-worker/.venv/bin/python bench/inference.py --family qwen2_5_vl   # another family's tiny model (--real-arch:
                                                                        # its real architecture, CUDA)

Every item is one photo (the demo photos when ../shared/data is there, else synthetic ones) with the caption
preset; each answer is exactly --new-tokens long (EOS ignored), so batch sizes compare like for like. A warm-up
batch runs first. --smolvlm-arch uses random weights with SmolVLM-Instruct's published config and processor
(fixtures/architectures.py: SigLIP so400m/14 at 384 px, SmolLM2-1.7B text, scale factor 3, 81 tokens per tile,
longest edge 1536). Prints a table; writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import families
import torch
from machine import shown, write_result  # bench/machine.py: machine, versions, git commit, -latest.json
from PIL import Image

from vlmflow.v1 import common_pb2, generate_pb2, worker_pb2
from vlmflow_worker.infer.generate import run_generate
from vlmflow_worker.models import ModelCache
from vlmflow_worker.serve.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
DEMO_PHOTOS = REPO.parent / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data"


def smolvlm_instruct_folder() -> Path:
    """SmolVLM-Instruct's architecture and processor with random weights (fixtures/architectures.py, the published
    configs), built once into .state/models/ as the tests build it."""
    from vlmflow_worker.fixtures.architectures import build_architecture

    return build_architecture("smolvlm-2.2b", REPO / ".state" / "models" / "smolvlm-2.2b-random")


def photos(count: int) -> list[bytes]:
    import io

    if DEMO_PHOTOS.is_dir():
        sources = [(DEMO_PHOTOS / f"{i}.jpg").read_bytes() for i in (1, 2, 3)]
    else:
        sources = []
        for colour in ((200, 40, 40), (40, 160, 60), (40, 60, 200)):
            buffer = io.BytesIO()
            Image.new("RGB", (480, 320), colour).save(buffer, format="JPEG")
            sources.append(buffer.getvalue())
    return [sources[i % len(sources)] for i in range(count)]


def request(model_id: str, images: list[bytes], batch_size: int, new_tokens: int) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=model_id),
        items=[
            generate_pb2.GenerateItem(id=str(i), task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(data=data)])
            for i, data in enumerate(images)
        ],
        generation=common_pb2.GenerationConfig(max_new_tokens=new_tokens),
        batch_size=batch_size,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smolvlm-arch", action="store_true", help="Random-weight SmolVLM-Instruct shapes (CUDA).")
    parser.add_argument("--family", choices=families.FAMILIES, default="idefics3", help="Model family (tiny on CPU).")
    parser.add_argument("--real-arch", action="store_true", help="The family's real architecture, random weights.")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--items", type=int, default=32, help="Items per measurement (a multiple of 16 is fairest).")
    parser.add_argument("--new-tokens", type=int, default=32, help="Answer length, exactly (EOS ignored).")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default). On a small shared CPU, 1 avoids threads spinning on each "
        "other: the tiny model's ops are too small to split.",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smolvlm_arch:  # the Idefics3 family's real architecture, SmolVLM-Instruct (kept for earlier commands)
        args.family, args.real_arch = "idefics3", True
    if args.real_arch and args.device != "cuda":
        print("note: a real architecture on CPU is very slow; it is meant for a CUDA machine", file=sys.stderr)

    settings = WorkerSettings(artifact_root=REPO / ".state" / "artifacts")
    cache = ModelCache(settings=settings, device=args.device)
    if args.real_arch and args.family == "idefics3":
        model_id = str(smolvlm_instruct_folder())
        name = "smolvlm-instruct-arch"  # the name its recorded results carry
    else:
        model_id = str(families.model_folder(args.family, "cuda" if args.real_arch else "cpu"))
        name = f"{families.ARCHITECTURES[args.family]}-arch" if args.real_arch else f"tiny-{args.family}"
    entry, _ = cache.get(model_id)
    params = sum(p.numel() for p in entry.model.parameters())
    # min_new_tokens pins every answer to the same length; the random model would otherwise stop anywhere.
    fixed_length = {"min_new_tokens": args.new_tokens}

    images = photos(args.items)
    warm = request(model_id, images[:2], 2, 4)
    run_generate(warm, settings, cache, extra_generate_kwargs={"min_new_tokens": 4})

    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        response = run_generate(
            request(model_id, images, batch_size, args.new_tokens), settings, cache, extra_generate_kwargs=fixed_length
        )
        seconds = time.perf_counter() - started
        tokens = sum(r.answer_tokens for r in response.results)
        rows.append(
            {
                "batch_size": batch_size,
                "items": len(response.results),
                "seconds": round(seconds, 3),
                "items_per_second": round(len(response.results) / seconds, 3),
                "answer_tokens_per_second": round(tokens / seconds, 1),
                "prompt_tokens_per_item": response.results[0].prompt_tokens,
                "preprocess_seconds": round(response.timings.preprocess_seconds, 3),
                "generate_seconds": round(response.timings.generate_seconds, 3),
                **(
                    {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
                    if args.device == "cuda"
                    else {}
                ),
            }
        )
        row = rows[-1]
        print(
            f"batch {batch_size:>3}: {row['items_per_second']:>8.2f} items/s  "
            f"{row['answer_tokens_per_second']:>9.1f} answer tokens/s  ({row['seconds']:.1f}s)",
            flush=True,
        )

    base = rows[0]["items_per_second"]
    print(f"\n{name} on {args.device} ({params / 1e6:.1f}M params, {args.new_tokens} answer tokens per item)")
    print(f"{'batch':>5} | {'items/s':>8} | {'answer tok/s':>12} | {'prompt tok/item':>15} | {'x batch 1':>9}")
    for row in rows:
        print(
            f"{row['batch_size']:>5} | {row['items_per_second']:>8.2f} | {row['answer_tokens_per_second']:>12.1f} | "
            f"{row['prompt_tokens_per_item']:>15} | {row['items_per_second'] / base:>9.2f}"
        )

    result = {
        "model": name,
        "parameters": params,
        "device": args.device,
        "new_tokens": args.new_tokens,
        "items": args.items,
        "rows": rows,
    }
    out = write_result(f"inference-{name}-{args.device}", result, args.out)
    print(f"\nwrote {shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
