"""The Evaluate job: the base model and its tuned variants on the same eval split, scored, compared, reported.

1. Read the prepared dataset's eval split (`dataset.json` says SFT or preference rows).
2. Load the base once and attach every variant's adapter to it by name, so all variants share the base weights
   and the base itself is the same model with the adapters disabled.
3. For each variant, with the same prompts and the same generation settings: greedy (or seeded) answers; for
   preference rows also the log-probabilities of the chosen and rejected answers, whose difference to the base
   gives DPO's implicit rewards.
4. Metrics chosen by the dataset (or named in the request), bootstrap intervals, the paired comparison of each
   variant against the base, and the report (`report.py`) in `output_uri`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.errors import BadData, FailedPrecondition, InvalidArgument, NotFound, OutOfMemory
from vlmflow_worker.evaluate import metrics as M
from vlmflow_worker.evaluate.report import read_curves, write_report
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.spec import JobResult, JobSpec
from vlmflow_worker.request_fields import set_fields
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri
from vlmflow_worker.tracking.settings import settings_of as tracking_settings_of

BASE = "base"
DEFAULT_BOOTSTRAP = 1000
DEFAULT_BATCH = 8
IMPLICIT_REWARD_BETA = 0.1  # for variants that were not DPO-trained; scales reward_margin only, never accuracy
SHORT_ANSWER_WORDS = 4


# ---------------------------------------------------------------------------------------------------------------
# Rows


@dataclasses.dataclass
class EvalRow:
    id: str
    prompt: list[dict[str, Any]]  # the conversation up to the answer
    images: list[str]  # paths relative to the dataset folder
    references: list[str]
    question: str
    chosen: list[dict[str, Any]] | None = None  # preference rows: the assistant messages
    rejected: list[dict[str, Any]] | None = None
    frames: list[int] = dataclasses.field(default_factory=list)  # which images are video frames (prep's video_frames)
    videos: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # native videos as prep stores them


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") for m in messages for p in m.get("content", []) if p.get("type") == "text")


def to_eval_row(row: dict[str, Any], index: int) -> EvalRow:
    images = list(row.get("images") or [])
    if "chosen" in row:
        prompt = row["prompt"]
        chosen, rejected = row["chosen"], row["rejected"]
        frames = list(row.get("video_frames") or [])
        return EvalRow(
            str(row.get("id", index)), prompt, images, [_text(chosen)], _text(prompt[-1:]), chosen, rejected, frames
        )
    messages = row["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 1:
        raise BadData(f"eval row {row.get('id', index)} has no assistant answer to compare with")
    prompt = messages[:last]
    references = [str(a) for a in row.get("answers") or []] or [_text(messages[last : last + 1])]
    question = _text([m for m in prompt if m["role"] == "user"][-1:])
    # The prompt keeps only the image markers of its own turns; the images list follows them in order.
    markers = sum(p.get("type") == "image" for m in prompt for p in m["content"])
    frames = [i for i in row.get("video_frames") or [] if i < markers]
    videos = list(row.get("videos") or [])[: sum(p.get("type") == "video" for m in prompt for p in m["content"])]
    name = str(row.get("id", index))
    return EvalRow(name, prompt, images[:markers], references, question, frames=frames, videos=videos)


def load_eval_rows(dataset_dir: Path, max_samples: int) -> tuple[dict[str, Any], list[EvalRow]]:
    try:
        meta = json.loads((dataset_dir / "dataset.json").read_text())
    except FileNotFoundError as err:
        raise NotFound(f"dataset_uri {dataset_dir} is not a prepared dataset (no dataset.json)") from err
    path = dataset_dir / meta.get("eval", "eval.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not rows:
        raise BadData(f"dataset_uri {dataset_dir} has an empty eval split; prepare it with eval_fraction > 0")
    if max_samples:
        rows = rows[:max_samples]
    return meta, [to_eval_row(row, i) for i, row in enumerate(rows)]


def default_metrics(kind: str, rows: list[EvalRow], meta: dict[str, Any]) -> list[str]:
    """Preference rows: implicit-reward accuracy and margin, and how often greedy answers are the chosen ones.
    Short answers (VQA, charts, documents): VQA accuracy, relaxed accuracy, ANLS. Longer ones: captioning metrics."""
    if meta.get("metrics"):
        return list(meta["metrics"])
    if kind == "preference":
        return ["preference_accuracy", "reward_margin", "chosen_pick_rate"]
    words = [len(ref.split()) for row in rows for ref in row.references]
    if sum(words) / max(len(words), 1) <= SHORT_ANSWER_WORDS:
        return ["vqa_accuracy", "relaxed_accuracy", "anls"]
    return ["cider", "bleu4", "rouge_l"]


# ---------------------------------------------------------------------------------------------------------------
# Model work


class Variants:
    """One base model with every variant's adapter attached by name; `active(name)` selects one."""

    def __init__(self, model, names_to_adapters: dict[str, str]) -> None:
        self.model = model
        self.adapters = names_to_adapters
        from vlmflow_worker.models import attach_adapter

        for name, path in names_to_adapters.items():
            self.model = attach_adapter(self.model, path, name=name, what=f"variant {name!r} adapter_uri")
        self.model.eval()

    @contextlib.contextmanager
    def active(self, name: str):
        if name not in self.adapters:
            with self.model.disable_adapter() if self.adapters else contextlib.nullcontext():
                yield self.model
            return
        self.model.set_adapter(name)
        yield self.model


def generate_answers(
    model, processor, rows: list[EvalRow], dataset_dir: Path, kwargs: dict, batch_size: int, check=lambda: None
):
    """Answers in row order, generated in batches of similar length (generate.py's batching and decoding);
    `check` runs before each batch (it raises to stop: cancellation)."""
    from PIL import Image

    from vlmflow_worker.infer.generate import PreparedItem, encode, generate_batch
    from vlmflow_worker.media import stored_video

    encodings = []
    for row in rows:
        images = [Image.open(dataset_dir / p).convert("RGB") for p in row.images]
        videos = [stored_video(dataset_dir, video) for video in row.videos]
        encodings.append(encode(processor, PreparedItem(row.id, row.prompt, images, row.frames, videos=videos)))
    order = sorted(range(len(rows)), key=lambda i: encodings[i]["input_ids"].shape[1])
    answers: dict[int, str] = {}
    for first in range(0, len(order), batch_size):
        check()
        chunk = order[first : first + batch_size]
        outputs = generate_batch(model, processor, [encodings[i] for i in chunk], kwargs)
        for i, (text, *_rest) in zip(chunk, outputs, strict=True):
            answers[i] = text
    return [answers[i] for i in range(len(rows))]


def answer_logps(model, processor, rows: list[EvalRow], dataset_dir: Path, which: str, batch_size: int) -> list[float]:
    """Sum of log-probabilities of the `which` ("chosen" / "rejected") answer tokens, end of utterance included,
    given the prompt and images: the sequence log-likelihood DPO's implicit reward is built from."""
    import torch

    from vlmflow_worker.train.collator import IGNORE, AnswerOnlyCollator

    collator = AnswerOnlyCollator(processor, dataset_dir, max_length=1 << 30)
    device = next(model.parameters()).device
    out: list[float] = []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        batch = collator(
            [
                {
                    "messages": r.prompt + getattr(r, which),
                    "images": r.images,
                    "video_frames": r.frames,
                    "videos": r.videos,
                }
                for r in chunk
            ]
        )
        labels = batch.pop("labels").to(device)
        batch = {k: v.to(device) for k, v in batch.items()}
        for key in ("pixel_values", "pixel_values_videos"):
            if key in batch:
                batch[key] = batch[key].to(model.dtype)
        with torch.inference_mode():
            logits = model(**batch).logits[:, :-1].float()
        targets = labels[:, 1:]
        mask = targets != IGNORE
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out += (token_logps * mask).sum(dim=1).tolist()
    return out


# ---------------------------------------------------------------------------------------------------------------
# The job


def settings_of(request: jobs_pb2.EvaluateRequest) -> dict[str, int]:
    """The request's values where it sets them, the defaults where it does not (max_samples 0: every row)."""
    chosen = {"batch_size": DEFAULT_BATCH, "max_samples": 0, "bootstrap_samples": DEFAULT_BOOTSTRAP}
    return chosen | set_fields(request, {name: name for name in chosen})


def validate(request: jobs_pb2.EvaluateRequest, settings: WorkerSettings) -> None:
    if not request.model.model_id:
        raise InvalidArgument("model.model_id is empty: name the base model")
    if request.model.adapter_uri:
        raise InvalidArgument("model.adapter_uri must be empty: put adapters in variants, the base is evaluated too")
    if request.model.quantization in (common_pb2.QUANTIZATION_NF4, common_pb2.QUANTIZATION_INT8):
        import torch

        if not torch.cuda.is_available():
            raise FailedPrecondition(
                "model.quantization needs a CUDA GPU (bitsandbytes) and this worker has none; evaluate with "
                "QUANTIZATION_NONE here, or send the job to a GPU worker"
            )
    dataset = resolve_uri(request.dataset_uri, settings, "dataset_uri")
    if not (dataset / "dataset.json").is_file():
        raise NotFound(f"dataset_uri {request.dataset_uri!r} is not a prepared dataset (no dataset.json)")
    names = set()
    for i, variant in enumerate(request.variants):
        if not variant.name or variant.name in names:
            raise InvalidArgument(f"variants[{i}].name must be non-empty and unique, got {variant.name!r}")
        names.add(variant.name)
        if variant.adapter_uri:
            adapter = resolve_uri(variant.adapter_uri, settings, f"variants[{i}].adapter_uri")
            if not (adapter / "adapter_config.json").is_file():
                raise NotFound(f"variants[{i}].adapter_uri {variant.adapter_uri!r} is not an adapter folder")
        if variant.training_log_uri:
            resolve_uri(variant.training_log_uri, settings, f"variants[{i}].training_log_uri")
    unknown = [m for m in request.metrics if m not in M.ALL_METRICS]
    if unknown:
        raise InvalidArgument(f"metrics: unknown {', '.join(unknown)}; choose from {', '.join(M.ALL_METRICS)}")
    if request.HasField("batch_size") and request.batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1 (or unset for {DEFAULT_BATCH}), got {request.batch_size}")
    if request.max_samples < 0:
        raise InvalidArgument(f"max_samples must be >= 0 (0: every row), got {request.max_samples}")
    if request.HasField("bootstrap_samples") and request.bootstrap_samples < 1:
        raise InvalidArgument(
            f"bootstrap_samples must be >= 1 (or unset for {DEFAULT_BOOTSTRAP}), got {request.bootstrap_samples}"
        )
    if not request.output_uri:
        raise InvalidArgument("output_uri is empty: name the folder for metrics.json, predictions.jsonl, report.html")
    resolve_uri(request.output_uri, settings, "output_uri")
    from vlmflow_worker.infer.generate import generation_kwargs

    generation_kwargs(request.generation)
    tracking_settings_of(request)


def _variants(request: jobs_pb2.EvaluateRequest) -> list[jobs_pb2.EvalVariant]:
    """The base first (named "base" unless a variant without adapter names it), then the tuned variants."""
    bases = [v for v in request.variants if not v.adapter_uri]
    tuned = [v for v in request.variants if v.adapter_uri]
    base = bases[0] if bases else jobs_pb2.EvalVariant(name=BASE)
    return [base, *tuned]


@dataclasses.dataclass(frozen=True)
class Reference:
    """What a variant's implicit reward is measured against, as it trained: beta * (log p_variant - log p_ref)."""

    model: str  # the variant whose log-probabilities are the reference, or a REFERENCE_PREFIX name loaded for it
    beta: float
    adapter: str  # the reference adapter's folder; empty for the base model


REFERENCE_PREFIX = "reference:"


def references(variants: list[jobs_pb2.EvalVariant], adapters: dict[str, str]) -> dict[str, Reference]:
    """Per tuned variant, the reference and beta its DPO run trained with (its adapter's training_config.json:
    `adapter_dir`, the SFT adapter it continued, whose frozen copy was the reference; `beta`). A variant that is
    not a DPO adapter is measured against the base with IMPLICIT_REWARD_BETA. A reference adapter that is not one
    of the variants gets a name of its own (REFERENCE_PREFIX) and is loaded beside them."""
    base = variants[0].name
    by_folder = {str(Path(folder).resolve()): name for name, folder in adapters.items()}
    found: dict[str, Reference] = {}
    for variant in variants[1:]:
        settings_file = Path(adapters[variant.name]) / "training_config.json"
        trained = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        if "beta" not in trained:
            found[variant.name] = Reference(base, IMPLICIT_REWARD_BETA, "")
            continue
        folder = str(trained.get("adapter_dir") or "")
        if not folder:
            found[variant.name] = Reference(base, float(trained["beta"]), "")
            continue
        if not (Path(folder) / "adapter_config.json").is_file():
            raise NotFound(
                f"variant {variant.name!r} was DPO-trained against the adapter {folder}, which is no longer there; "
                "its preference metrics need that reference"
            )
        model = by_folder.get(str(Path(folder).resolve()), REFERENCE_PREFIX + folder)
        found[variant.name] = Reference(model, float(trained["beta"]), folder)
    return found


def _max_new_tokens(processor, rows: list[EvalRow], requested: int) -> int:
    """Requested, else twice the longest reference in tokens plus 8 (at most 128): enough for the answers this
    split expects, without paying for 128 tokens of rambling per row."""
    if requested:
        return requested
    longest = max(
        len(processor.tokenizer(ref, add_special_tokens=False)["input_ids"]) for r in rows for ref in r.references
    )
    return min(128, 2 * longest + 8)


def run(request: jobs_pb2.EvaluateRequest, ctx: JobContext) -> JobResult:
    import torch

    from vlmflow_worker.infer.generate import generation_kwargs
    from vlmflow_worker.models import ModelSpec, load_model

    settings = ctx.settings
    dataset_dir = resolve_uri(request.dataset_uri, settings, "dataset_uri")
    out_dir = resolve_uri(request.output_uri, settings, "output_uri")
    meta, rows = load_eval_rows(dataset_dir, settings_of(request)["max_samples"])
    kind = meta.get("kind", "sft")
    names = list(request.metrics) or default_metrics(kind, rows, meta)
    if kind != "preference" and any(m in M.PREFERENCE_METRICS or m == "chosen_pick_rate" for m in names):
        raise InvalidArgument(f"metrics {names}: preference metrics need a preference dataset, this one is {kind}")
    variants = _variants(request)
    base_name = variants[0].name
    batch_size = settings_of(request)["batch_size"]

    ctx.progress("loading model", step=0, total_steps=len(variants))
    model, processor = load_model(ModelSpec.from_proto(request.model, settings))
    adapters = {v.name: str(resolve_uri(v.adapter_uri, settings, "adapter_uri")) for v in variants[1:]}
    refs = references(variants, adapters) if kind == "preference" else {}
    extra = {r.model: r.adapter for r in refs.values() if r.model.startswith(REFERENCE_PREFIX)}
    models = Variants(model, adapters | extra)
    kwargs = generation_kwargs(request.generation)
    kwargs["max_new_tokens"] = _max_new_tokens(processor, rows, request.generation.max_new_tokens)

    predictions: dict[str, list[str]] = {}
    logps: dict[str, dict[str, list[float]]] = {}
    timings: dict[str, float] = {}
    for i, variant in enumerate(variants):
        ctx.raise_if_cancelled()
        ctx.progress(f"evaluating {variant.name}", step=i, total_steps=len(variants))
        started = time.perf_counter()
        if request.generation.seed:
            torch.manual_seed(request.generation.seed)  # the same sampling noise for every variant
        try:
            with models.active(variant.name) as active:
                predictions[variant.name] = generate_answers(
                    active, processor, rows, dataset_dir, kwargs, batch_size, ctx.raise_if_cancelled
                )
                if kind == "preference":
                    logps[variant.name] = {
                        which: answer_logps(active, processor, rows, dataset_dir, which, batch_size)
                        for which in ("chosen", "rejected")
                    }
        except torch.OutOfMemoryError as err:
            raise OutOfMemory(
                f"out of device memory evaluating {variant.name} with batch_size {batch_size}; lower batch_size",
                detail=str(err),
            ) from err
        timings[variant.name] = time.perf_counter() - started

    for name in extra:  # references that are not variants: their log-probabilities only
        ctx.raise_if_cancelled()
        with models.active(name) as active:
            logps[name] = {
                which: answer_logps(active, processor, rows, dataset_dir, which, batch_size)
                for which in ("chosen", "rejected")
            }

    ctx.progress("scoring", step=len(variants), total_steps=len(variants))
    base_ref = Reference(base_name, IMPLICIT_REWARD_BETA, "")
    scores = {
        v.name: _score(names, predictions[v.name], rows, logps, v.name, refs.get(v.name, base_ref)) for v in variants
    }
    samples = settings_of(request)["bootstrap_samples"]
    summary = _summary(request, meta, rows, variants, scores, samples, kwargs)
    if refs:  # what each variant's implicit reward was measured against
        summary["preference_reference"] = {
            v: {"reference": r.adapter or "base model", "beta": r.beta} for v, r in refs.items()
        }
    per_sample = _samples(rows, variants, predictions, scores)
    curves = _curves(variants, settings)
    paths = write_report(out_dir, summary, per_sample, curves, image_root=dataset_dir)

    result_metrics: dict[str, float] = {}
    for variant in variants:
        for name, entry in summary["metrics"][variant.name].items():
            result_metrics[f"{variant.name}/{name}"] = float(entry["value"])
        result_metrics[f"{variant.name}/items_per_second"] = len(rows) / max(timings[variant.name], 1e-9)
    for variant, comparisons in summary["comparisons"].items():
        for name, cmp in comparisons.items():
            result_metrics[f"{variant}/{name}/delta"] = float(cmp["delta"])
            result_metrics[f"{variant}/{name}/better"] = float(cmp["verdict"] == "better")
    ctx.eval(0, {k: v for k, v in result_metrics.items() if not k.endswith(("/delta", "/better"))})
    if ctx.mlflow is not None:  # the pipeline run's MLflow run (tracking.mlflow): the table, the report
        ctx.mlflow.log_evaluation(summary, result_metrics, paths)
    return JobResult(artifacts={k: str(v) for k, v in paths.items()}, metrics=result_metrics)


def _score(names, predictions, rows, logps, variant, reference: Reference) -> dict[str, M.Scores]:
    out: dict[str, M.Scores] = {}
    for name in names:
        if name in M.PREFERENCE_METRICS:
            ref = logps[reference.model]
            chosen = M.implicit_rewards(logps[variant]["chosen"], ref["chosen"], reference.beta)
            rejected = M.implicit_rewards(logps[variant]["rejected"], ref["rejected"], reference.beta)
            fn = M.preference_accuracy if name == "preference_accuracy" else M.reward_margin
            out[name] = fn(chosen, rejected)
        elif name == "chosen_pick_rate":
            out[name] = M.chosen_pick_rate(predictions, [r.references[0] for r in rows])
        else:
            out[name] = M.compute(name, predictions, [r.references for r in rows])
    return out


def _summary(request, meta, rows, variants, scores, samples, kwargs) -> dict[str, Any]:
    base = variants[0].name
    summary: dict[str, Any] = {
        "title": f"{Path(request.dataset_uri).name}: {' vs '.join(v.name for v in variants)}",
        "model": request.model.model_id,
        "dataset": request.dataset_uri,
        "dataset_fingerprint": meta.get("fingerprint", ""),
        "num_samples": len(rows),
        "generation": {k: v for k, v in kwargs.items() if v is not None},
        "variants": [v.name for v in variants],
        "adapters": {v.name: v.adapter_uri for v in variants},
        "level": 0.95,
        "bootstrap_samples": samples,
        "metrics": {},
        "comparisons": {},
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for variant in variants:
        summary["metrics"][variant.name] = {}
        for name, s in scores[variant.name].items():
            ci = M.bootstrap_ci(s, samples=samples)
            summary["metrics"][variant.name][name] = {"value": ci.value, "low": ci.low, "high": ci.high}
    for variant in variants[1:]:
        summary["comparisons"][variant.name] = {
            name: dataclasses.asdict(M.paired_comparison(scores[base][name], s, samples=samples))
            for name, s in scores[variant.name].items()
        }
    return summary


def _samples(rows, variants, predictions, scores) -> list[dict[str, Any]]:
    per_sample = {v.name: {n: s.per_sample() for n, s in scores[v.name].items()} for v in variants}
    out = []
    for i, row in enumerate(rows):
        sample = {
            "id": row.id,
            "question": row.question,
            "references": row.references,
            "images": row.images,
            "predictions": {v.name: predictions[v.name][i] for v in variants},
            "scores": {v.name: {n: values[i] for n, values in per_sample[v.name].items()} for v in variants},
        }
        if row.rejected is not None:
            sample["rejected"] = _text(row.rejected)
        out.append(sample)
    return out


def _curves(variants, settings) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Chart title -> series: training loss and eval figures of every variant that names its training log."""
    charts: dict[str, dict[str, list]] = {}
    titles = {
        "loss": "Training loss",
        "eval/loss": "Eval loss",
        "rewards/margins": "DPO reward margin",
        "rewards/accuracies": "DPO reward accuracy",
        "reward": "GRPO mean reward",
        "reward_std": "GRPO reward spread (std)",
        "kl": "GRPO KL to the reference",
        "completions/mean_length": "GRPO completion length (tokens)",
    }
    for variant in variants:
        if not variant.training_log_uri:
            continue
        curves = read_curves(resolve_uri(variant.training_log_uri, settings, "training_log_uri"))
        for key, points in curves.items():
            title = titles.get(key) or grpo_title(key) or (f"Eval {key[5:]}" if key.startswith("eval/") else None)
            if title and points:
                charts.setdefault(title, {})[variant.name] = points
    return charts


def grpo_title(key: str) -> str | None:
    """GRPO's per-reward means (rewards/<name>/mean) each get a chart; DPO's rewards/* have their own titles."""
    if key.startswith("rewards/") and key.endswith("/mean"):
        return f"GRPO reward: {key.removeprefix('rewards/').removesuffix('/mean')}"
    return None


JOB = JobSpec(request_type=jobs_pb2.EvaluateRequest, validate=validate, run=run)
