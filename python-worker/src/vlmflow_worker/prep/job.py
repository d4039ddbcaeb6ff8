"""The PrepareDataset job: sources -> one normalized dataset in the artifact store, or a typed failure.

Output: `<output_uri>/<fingerprint[:16]>/` with `train.jsonl`, `eval.jsonl`, `images/`, `stats.json` and
`dataset.json`, written into a temporary sibling and renamed, so a folder that exists is complete. The
fingerprint covers the sources' content and every setting: a second prep of the same inputs is a cache hit.

Zero request fields mean defaults: max_length 2048, eval_fraction 0.1, max_drop_fraction 0.1, all rows.

Parallelism: checking a row (decoding and storing its images, counting its tokens) is independent of the others, so
past the first SERIAL_ROWS rows of a source the rest go through a process pool of VLMFLOW_PREP_PROCESSES processes
(default: every core, at most 8; 1 turns it off). `imap` keeps the input order, so the output is identical either way;
a small dataset never pays for starting the pool.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import random
import shutil
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.encoding import encode_media, encode_row
from vlmflow_worker.errors import BadData, InvalidArgument, NotFound
from vlmflow_worker.families import family_of_processor
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.spec import JobResult, JobSpec
from vlmflow_worker.prep.media import Drop, MediaStore
from vlmflow_worker.prep.readers import fingerprint_source, read_records, resolve_source
from vlmflow_worker.prep.rows import Normalizer, Row
from vlmflow_worker.request_fields import set_fields
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri

PREP_VERSION = 3  # bump when the output format or checks change: old fingerprints stop matching
DEFAULT_MAX_LENGTH = 2048
DEFAULT_EVAL_FRACTION = 0.1
DEFAULT_MAX_DROP_FRACTION = 0.1
EXAMPLES_PER_REASON = 5
PROCESSES_ENV = "VLMFLOW_PREP_PROCESSES"
SERIAL_ROWS = 512  # checked in the job process before a pool is worth its start-up (seconds per process)


def settings_of(request: jobs_pb2.PrepareDatasetRequest) -> dict[str, Any]:
    """What prep runs with: the request's values where it sets them (zeros included: max_drop_fraction 0 drops
    nothing, eval_fraction 0 holds nothing out), the defaults where it does not."""
    chosen: dict[str, Any] = {
        "max_length": DEFAULT_MAX_LENGTH,
        "eval_fraction": DEFAULT_EVAL_FRACTION,
        "max_drop_fraction": DEFAULT_MAX_DROP_FRACTION,
        "seed": 0,
        "max_rows": 0,
    }
    chosen |= set_fields(request, {name: name for name in chosen})
    return chosen | {"model": request.model.model_id, "revision": request.model.revision}


def validate(request: jobs_pb2.PrepareDatasetRequest, settings: WorkerSettings) -> None:
    if not request.sources:
        raise InvalidArgument("sources is empty: pass at least one DatasetSource with a uri")
    for i, source in enumerate(request.sources):
        if not source.uri:
            raise InvalidArgument(f"sources[{i}].uri is empty")
        resolved = resolve_source(i, source, settings)
        if resolved.path is not None and not resolved.path.exists():
            raise NotFound(f"sources[{i}].uri {source.uri!r} does not exist")
        if source.layout not in jobs_pb2.DatasetLayout.values():
            raise InvalidArgument(f"sources[{i}].layout {source.layout} is not a DatasetLayout value")
    if not 0 <= request.eval_fraction < 1:
        raise InvalidArgument(f"eval_fraction must be in [0, 1), got {request.eval_fraction}")
    if not 0 <= request.max_drop_fraction <= 1:
        raise InvalidArgument(f"max_drop_fraction must be in [0, 1], got {request.max_drop_fraction}")
    if request.HasField("max_length") and request.max_length < 16:
        raise InvalidArgument(
            f"max_length must be at least 16 (or unset for {DEFAULT_MAX_LENGTH}), got {request.max_length}"
        )
    if request.max_rows < 0:
        raise InvalidArgument(f"max_rows must be >= 0, got {request.max_rows}")
    resolve_uri(request.output_uri or "datasets", settings, "output_uri")


class TokenCounter:
    """Sequence lengths as the model will see them: chat template plus the processor's image and video tokens."""

    def __init__(self, model: jobs_pb2.ModelRef, settings: WorkerSettings) -> None:
        self.processor = load_processor(model, settings)
        # Whether the model's family takes videos itself: its rows then keep their videos (rows.py).
        self.native_video = family_of_processor(self.processor).video == "native"

    def count(self, row: Row) -> int:
        if row.kind == "sft":
            texts = [self.processor.apply_chat_template(row.data["messages"], tokenize=False)]
        else:
            texts = [
                self.processor.apply_chat_template(row.data["prompt"] + row.data[key], tokenize=False)
                for key in ("chosen", "rejected")
            ]
        # The training collator's own encoding: video frames one tile each, or a native video through the family's
        # video input with its own token arithmetic, as Generate shows them.
        try:
            lengths = [
                encode_media(self.processor, text, row.images, row.videos)
                if row.videos
                else encode_row(self.processor, text, row.images, row.frames)
                for text in texts
            ]
        except BadData as err:
            raise Drop("unsupported_media", err.message) from err
        return max(int(encoded["input_ids"].shape[1]) for encoded in lengths)


def load_processor(model: jobs_pb2.ModelRef, settings: WorkerSettings):
    """The model's processor alone (no weights), found the way `models.load_model` finds the model."""
    from transformers import AutoProcessor

    from vlmflow_worker.models import ModelSpec, resolve_model_source

    spec = ModelSpec.from_proto(model, settings)
    source, local_only = resolve_model_source(spec)
    try:
        return AutoProcessor.from_pretrained(
            source,
            revision=spec.revision or None,
            trust_remote_code=spec.trust_remote_code,
            local_files_only=local_only,
        )
    except (OSError, ValueError) as err:
        raise NotFound(f"model.model_id {model.model_id!r}: its processor could not be loaded ({err})") from err


def fingerprint(request: jobs_pb2.PrepareDatasetRequest, settings: WorkerSettings) -> str:
    sources = []
    for i, spec in enumerate(request.sources):
        source = resolve_source(i, spec, settings)
        sources.append(
            {
                "content": fingerprint_source(source),
                "layout": spec.layout,
                "columns": dict(sorted(spec.columns.items())),
                "split": spec.split,
                "subset": spec.subset,
            }
        )
    payload = {"version": PREP_VERSION, "settings": settings_of(request), "sources": sources}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run(request: jobs_pb2.PrepareDatasetRequest, ctx: JobContext) -> JobResult:
    options = settings_of(request)
    fp = fingerprint(request, ctx.settings)
    out_root = resolve_uri(request.output_uri or "datasets", ctx.settings, "output_uri")
    final = out_root / fp[:16]
    if (final / "dataset.json").is_file():
        ctx.log(f"cache hit: {final} was prepared from the same inputs and settings")
        return result(final, json.loads((final / "stats.json").read_text()), fp, cached=True)

    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{fp[:16]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stats = build(request, options, ctx, tmp, fp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result(final, stats, fp, cached=False)


class RowChecker:
    """One record -> ("row", kind, data, image sizes, tokens) or ("drop", reason, detail); images stored in `out`."""

    def __init__(self, model: common_pb2.ModelRef, settings: WorkerSettings, out: Path, max_length: int) -> None:
        self.counter = TokenCounter(model, settings) if model.model_id else None
        native_video = self.counter.native_video if self.counter else False
        self.normalizer = Normalizer(MediaStore(out, settings), native_video)
        self.max_length = max_length

    def __call__(self, record: Any, layout: int, base: Path | None, columns: dict[str, str]) -> tuple:
        try:
            row = self.normalizer.row(record, layout, base, columns)
            length = self.counter.count(row) if self.counter else 0
            if self.counter and length > self.max_length:
                raise Drop(
                    "too_long",
                    f"{length} tokens (images and videos included) > max_length {self.max_length}; dropped rather "
                    "than cut",
                )
        except Drop as drop:
            return ("drop", drop.reason, drop.detail)
        return ("row", row.kind, row.data, [image.size for image in row.images], length)


_pool_checker: RowChecker | str = ""  # in a pool process: its own checker, built once (or why it could not be)


def _pool_init(model_bytes: bytes, settings: WorkerSettings, out: Path, max_length: int) -> None:
    global _pool_checker
    try:
        _pool_checker = RowChecker(common_pb2.ModelRef.FromString(model_bytes), settings, out, max_length)
    except Exception as err:  # raised here, the pool would start replacement processes forever
        _pool_checker = f"a prep pool process could not start: {type(err).__name__}: {err}"


def _pool_check(task: tuple) -> tuple:
    if isinstance(_pool_checker, str):
        raise RuntimeError(_pool_checker)
    return _pool_checker(*task)


def prep_processes() -> int:
    value = os.environ.get(PROCESSES_ENV, "")
    return max(1, int(value)) if value.strip() else min(8, os.cpu_count() or 1)


def checked(records: Iterable[Any], check: RowChecker, args: tuple, pool_args: tuple) -> Iterator[tuple]:
    """Checked rows in input order: the first SERIAL_ROWS here, the rest through a pool when one is allowed."""
    records = iter(records)
    head = list(itertools.islice(records, SERIAL_ROWS))
    yield from (check(record, *args) for record in head)
    processes = prep_processes()
    if len(head) < SERIAL_ROWS or processes == 1:
        yield from (check(record, *args) for record in records)
        return
    # spawn, not fork: the job process may hold threads (torch, tokenizers) that a fork would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_pool_init, initargs=pool_args) as pool:
        yield from pool.imap(_pool_check, ((record, *args) for record in records), chunksize=32)


def build(request, options: dict[str, Any], ctx: JobContext, out: Path, fp: str) -> dict[str, Any]:
    if not request.model.model_id:
        ctx.warning("model is empty: token lengths are not checked; pass the model you will train")
    check = RowChecker(request.model, ctx.settings, out, options["max_length"])
    pool_args = (request.model.SerializeToString(), ctx.settings, out, options["max_length"])
    kept: list[dict[str, Any]] = []
    kinds: set[str] = set()
    dropped: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rows_in = 0
    for i, spec in enumerate(request.sources):
        source = resolve_source(i, spec, ctx.settings)
        base = source.base if source.path is not None else None
        records = read_records(source)
        if options["max_rows"]:
            records = itertools.islice(records, max(0, options["max_rows"] - rows_in))
        args = (spec.layout, base, dict(spec.columns))
        for number, outcome in enumerate(checked(records, check, args, pool_args)):
            rows_in += 1
            if rows_in % 50 == 0:
                ctx.raise_if_cancelled()
                ctx.progress("reading rows", step=rows_in)
            if outcome[0] == "drop":
                _, reason, detail = outcome
                dropped[reason] += 1
                if len(examples[reason]) < EXAMPLES_PER_REASON:
                    examples[reason].append({"source": i, "row": number, "detail": detail})
                continue
            _, kind, data, sizes, length = outcome
            kinds.add(kind)
            kept.append({"id": f"s{i}-{number}", **data, "num_tokens": length, "image_sizes": sizes})

    if rows_in == 0:
        raise BadData("the sources hold no rows: check the uris and that the files are not empty")
    if len(kinds) > 1:
        raise BadData("the sources mix preference rows (chosen/rejected) with SFT rows; prepare them separately")
    drop_share = sum(dropped.values()) / rows_in
    stats = stats_of(rows_in, kept, dropped, examples, options, fp)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    if not kept or drop_share > options["max_drop_fraction"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in dropped.most_common())
        first = next(iter(examples.values()))[0] if examples else None
        where = f"sources[{first['source']}] row {first['row']}: {first['detail']}" if first else ""
        raise BadData(
            f"{sum(dropped.values())} of {rows_in} rows dropped ({drop_share:.0%} > max_drop_fraction "
            f"{options['max_drop_fraction']:.0%}): {reasons}. First problem, {where}",
            detail=json.dumps(stats["drop_examples"])[:4000],
        )

    train, evaluation = split(kept, options["eval_fraction"], options["seed"])
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evaluation)
    stats.update(train_rows=len(train), eval_rows=len(evaluation))
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    meta = {"kind": kinds.pop(), "fingerprint": fp, "train": "train.jsonl", "eval": "eval.jsonl", **options}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    ctx.progress("done", step=rows_in, total_steps=rows_in)
    return stats


def split(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list, list]:
    """Fixed-seed shuffle; at least one eval row when there are two rows or more."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(rows) * eval_fraction)
    if len(rows) >= 2:
        n_eval = min(max(n_eval, 1), len(rows) - 1)
    else:
        n_eval = 0
    eval_ids = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in eval_ids], [r for i, r in enumerate(rows) if i in eval_ids]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def stats_of(rows_in, kept, dropped, examples, options, fp) -> dict[str, Any]:
    tokens = sorted(r["num_tokens"] for r in kept)
    sizes = [s for r in kept for s in r["image_sizes"]]

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0

    return {
        "fingerprint": fp,
        "rows_in": rows_in,
        "rows_kept": len(kept),
        "rows_dropped": sum(dropped.values()),
        "dropped": dict(dropped),
        "drop_examples": dict(examples),
        "images": len(sizes),
        "image_width": {"min": min((w for w, _ in sizes), default=0), "max": max((w for w, _ in sizes), default=0)},
        "image_height": {"min": min((h for _, h in sizes), default=0), "max": max((h for _, h in sizes), default=0)},
        "tokens": {
            "min": tokens[0] if tokens else 0,
            "mean": statistics.fmean(tokens) if tokens else 0,
            "p95": pct(tokens, 0.95),
            "max": tokens[-1] if tokens else 0,
        },
        "settings": options,
    }


def result(folder: Path, stats: dict[str, Any], fp: str, cached: bool) -> JobResult:
    metrics = {
        "rows_in": stats["rows_in"],
        "rows_kept": stats["rows_kept"],
        "rows_dropped": stats["rows_dropped"],
        "train_rows": stats.get("train_rows", 0),
        "eval_rows": stats.get("eval_rows", 0),
        "tokens_max": stats["tokens"]["max"],
        "tokens_mean": stats["tokens"]["mean"],
        **{f"dropped_{reason}": n for reason, n in stats["dropped"].items()},
    }
    artifacts = {
        "dataset": str(folder),
        "train": str(folder / "train.jsonl"),
        "eval": str(folder / "eval.jsonl"),
        "stats": str(folder / "stats.json"),
    }
    return JobResult(
        artifacts=artifacts, metrics={k: float(v) for k, v in metrics.items()}, cached=cached, fingerprint=fp
    )


JOB = JobSpec(request_type=jobs_pb2.PrepareDatasetRequest, validate=validate, run=run)
