"""Ask a model about images or a video from the shell, without Temporal or a server: a quick check for people.

python -m vlmflow_worker.infer.cli --model HuggingFaceTB/SmolVLM-Instruct --image a.jpg --prompt "What is this?"
python -m vlmflow_worker.infer.cli --model .state/models/tiny-idefics3 --task caption --image a.jpg --image b.jpg
python -m vlmflow_worker.infer.cli --model ... --video clip.mp4 --num-frames 8 --prompt "What happens?"

Several --image flags with --task caption/vqa/ocr ask one question per image (a batch); with --task multi-image
(the default for several images and a prompt) they form one item. Runs the same code as the Generate RPC.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlmflow.v1 import common_pb2, generate_pb2, worker_pb2
from vlmflow_worker.errors import WorkerError
from vlmflow_worker.infer.prompts import TASKS_BY_NAME

QUANTIZATIONS = {
    "none": common_pb2.QUANTIZATION_NONE,
    "nf4": common_pb2.QUANTIZATION_NF4,
    "int8": common_pb2.QUANTIZATION_INT8,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlmflow_worker.infer.cli",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--model", required=True, help="Hub id or local model folder.")
    parser.add_argument("--revision", default="", help="Hub branch, tag or commit.")
    parser.add_argument("--adapter", default="", help="LoRA adapter folder (safetensors) on top of the model.")
    parser.add_argument("--quantization", choices=sorted(QUANTIZATIONS), default="none", help="nf4/int8 need CUDA.")
    parser.add_argument("--trust-remote-code", action="store_true", help="Run model code from the hub.")
    parser.add_argument("--image", type=Path, action="append", default=[], help="Image file; repeat for several.")
    parser.add_argument("--video", type=Path, help="Video file (MP4, AVI, ...).")
    parser.add_argument("--prompt", default="", help="Question or instruction; presets have defaults.")
    parser.add_argument("--task", choices=sorted(TASKS_BY_NAME), help="Preset; inferred from the inputs when omitted.")
    parser.add_argument("--num-frames", type=int, default=0, help="Video frames sampled uniformly (default 8).")
    parser.add_argument("--fps", type=float, default=0.0, help="Sample video frames at this rate instead.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sample", action="store_true", help="Sample instead of greedy decoding.")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cuda", "cpu"], help="Default: CUDA when present.")
    parser.add_argument("--json", action="store_true", help="Print the whole response as JSON.")
    return parser


def build_request(args: argparse.Namespace) -> worker_pb2.GenerateRequest:
    """Images travel inline (they are the person's own files); the video by path."""
    images = [common_pb2.Image(data=path.read_bytes()) for path in args.image]
    task = TASKS_BY_NAME[args.task] if args.task else generate_pb2.TASK_UNSPECIFIED
    per_image = task in (generate_pb2.TASK_CAPTION, generate_pb2.TASK_VQA, generate_pb2.TASK_OCR)
    if per_image and len(images) > 1:
        items = [
            generate_pb2.GenerateItem(id=str(path), task=task, prompt=args.prompt, images=[image])
            for path, image in zip(args.image, images, strict=True)
        ]
    else:
        item = generate_pb2.GenerateItem(id="answer", task=task, prompt=args.prompt, images=images)
        if args.video:
            item.video.CopyFrom(
                common_pb2.Video(uri=str(args.video.resolve()), num_frames=args.num_frames, fps=args.fps)
            )
        items = [item]
    return worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(
            model_id=args.model,
            revision=args.revision,
            adapter_uri=str(Path(args.adapter).resolve()) if args.adapter else "",
            quantization=QUANTIZATIONS[args.quantization],
            trust_remote_code=args.trust_remote_code,
        ),
        items=items,
        generation=common_pb2.GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from google.protobuf.json_format import MessageToDict

    from vlmflow_worker.infer.generate import run_generate
    from vlmflow_worker.models import ModelCache
    from vlmflow_worker.serve.settings import WorkerSettings

    missing = [str(p) for p in [*args.image, *([args.video] if args.video else [])] if not p.is_file()]
    if missing:
        print(f"generate: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    # The files named on the command line are the person's own: their folders are the allowed roots.
    roots = sorted({p.resolve().parent for p in [*([args.video] if args.video else [])]})
    if args.adapter:
        roots.append(Path(args.adapter).resolve().parent)
    settings = WorkerSettings(data_roots=roots)
    try:
        response = run_generate(build_request(args), settings, ModelCache(settings=settings, device=args.device))
    except WorkerError as err:
        print(f"generate: {err.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return 0
    for result in response.results:
        prefix = f"[{result.id}] " if len(response.results) > 1 else ""
        print(f"{prefix}{result.text}")
    t = response.timings
    tokens = sum(r.answer_tokens for r in response.results)
    print(
        f"({tokens} answer tokens; load {t.load_seconds:.1f}s, preprocess {t.preprocess_seconds:.2f}s, "
        f"generate {t.generate_seconds:.2f}s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
