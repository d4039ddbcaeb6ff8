"""The Export job: merge a LoRA adapter into its base and write a folder any `transformers` user can load.

    AutoModelForImageTextToText.from_pretrained("<output_uri>")   # no PEFT, no vlmflow needed

1. Load the base without quantization. A QLoRA adapter was trained against 4-bit weights, but merging into 4-bit
   weights would round the update away, so the base is reloaded in bf16 and the adapter merged into that.
2. Load the adapter (PEFT, safetensors only) and merge it (`merge_and_unload`): plain Linear layers again.
3. Save safetensors weights, the processor (the adapter folder's, when training saved one, else the base's) and
   a model card (base, adapter settings, data fingerprint, training settings, eval table) into a temporary
   sibling folder, then rename it into place: a folder that exists is complete.
4. Optionally push the folder to the hub; without a token or a network this fails with a message saying so
   (the merged folder stays on disk).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import FailedPrecondition, InvalidArgument, NotFound, StorageError
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.spec import JobResult, JobSpec
from vlmflow_worker.models import ModelSpec, load_model
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri
from vlmflow_worker.tracking.settings import settings_of as tracking_settings_of

EXPORT_FILE = "vlmflow_export.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")


def merge_spec(spec: ModelSpec) -> ModelSpec:
    """The spec to merge with: never quantized; a quantized (QLoRA) base comes back in bf16."""
    dtype = "bfloat16" if spec.quantization != "none" and spec.dtype == "auto" else spec.dtype
    return dataclasses.replace(spec, quantization="none", dtype=dtype)


def merge_adapter(spec: ModelSpec, device: str = "cpu"):
    """Returns (merged model, processor, adapter_config dict)."""
    if not spec.adapter:
        raise InvalidArgument("model.adapter_uri is empty: name the adapter folder to merge into the base")
    model, processor = load_model(merge_spec(spec), device=device)
    adapter = Path(spec.adapter)
    merged = model.merge_and_unload()
    if any((adapter / name).is_file() for name in PROCESSOR_FILES):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(adapter), local_files_only=True)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    return merged, processor, adapter_config


def _training_facts(adapter: Path) -> dict[str, Any]:
    """What the trainer recorded beside the adapter (settings, data fingerprint), when it recorded anything."""
    facts: dict[str, Any] = {}
    for name in ("training_config.json", "vlmflow_train.json"):
        path = adapter / name
        if path.is_file():
            try:
                facts.update(json.loads(path.read_text()))
            except ValueError:
                continue
    # The trainers record the prepared dataset's folder; its dataset.json names the content fingerprint.
    dataset_meta = Path(str(facts.get("dataset_dir", ""))) / "dataset.json"
    if "data_fingerprint" not in facts and facts.get("dataset_dir") and dataset_meta.is_file():
        try:
            facts["data_fingerprint"] = json.loads(dataset_meta.read_text()).get("fingerprint", "")
        except ValueError:
            pass
    return facts


def _eval_table(metrics_path: Path) -> str:
    """A markdown table from an Evaluate job's metrics.json (variants as columns)."""
    try:
        summary = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return ""
    variants = summary.get("variants") or list(summary.get("metrics", {}))
    if not variants:
        return ""
    metric_names = list(summary["metrics"][variants[0]])
    lines = ["| metric | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for metric in metric_names:
        cells = []
        for variant in variants:
            m = summary["metrics"][variant].get(metric, {})
            value = m.get("value")
            text = f"{value:.4g}" if isinstance(value, int | float) else "–"
            if "low" in m and "high" in m:
                text += f" [{m['low']:.3g}, {m['high']:.3g}]"
            cells.append(text)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(spec: ModelSpec, adapter_config: dict[str, Any], facts: dict[str, Any], card: dict[str, str]) -> str:
    """README.md with hub front matter, what the model is and how it was made."""
    base = card.get("base_model") or spec.model_id
    fingerprint = card.get("data_fingerprint") or facts.get("data_fingerprint") or facts.get("dataset_fingerprint")
    lora = {
        "r": adapter_config.get("r"),
        "lora_alpha": adapter_config.get("lora_alpha"),
        "lora_dropout": adapter_config.get("lora_dropout"),
        "use_dora": adapter_config.get("use_dora", False),
        "target_modules": adapter_config.get("target_modules"),
    }
    out = [
        "---",
        f"base_model: {base}",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags: [vlmflow, lora, merged]",
        "---",
        "",
        f"# {card.get('name') or Path(spec.adapter).name} (merged)",
        "",
        f"`{base}` with a LoRA adapter merged into its weights by vlmflow. Loads with plain transformers:",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        'model = AutoModelForImageTextToText.from_pretrained("<this folder or repo>")',
        'processor = AutoProcessor.from_pretrained("<this folder or repo>")',
        "```",
        "",
        "## Provenance",
        "",
        f"- Base model: `{base}`" + (f" (revision `{spec.revision}`)" if spec.revision else ""),
        f"- Adapter: `{spec.adapter}`",
        f"- Quantization during training: {spec.quantization}"
        + (" (merged into a bf16 reload of the base)" if spec.quantization != "none" else ""),
        f"- Data fingerprint: `{fingerprint or 'not recorded'}`",
        "",
        "## Adapter settings",
        "",
        "```json",
        json.dumps(lora, indent=2),
        "```",
    ]
    if facts:
        out += ["", "## Training settings", "", "```json", json.dumps(facts, indent=2, default=str), "```"]
    extra = {k: v for k, v in card.items() if k not in ("base_model", "data_fingerprint", "name", "eval_metrics_uri")}
    if extra:
        out += ["", "## Notes", ""] + [f"- {k}: {v}" for k, v in sorted(extra.items())]
    table = card.get("_eval_table", "")
    if table:
        out += ["", "## Evaluation", "", table]
    return "\n".join(out) + "\n"


def export(
    spec: ModelSpec,
    out_dir: Path,
    card: dict[str, str] | None = None,
    eval_metrics: Path | None = None,
    device: str = "cpu",
) -> Path:
    """Merges `spec.adapter` into `spec.model_id` and writes the loadable folder `out_dir` (atomically)."""
    card = dict(card or {})
    merged, processor, adapter_config = merge_adapter(spec, device)
    facts = _training_facts(Path(spec.adapter))
    if eval_metrics is not None:
        card["_eval_table"] = _eval_table(eval_metrics)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(spec, adapter_config, facts, card))
        record = {
            "base_model": spec.model_id,
            "revision": spec.revision,
            "adapter": spec.adapter,
            "quantization": spec.quantization,
            "dtype": str(merged.dtype).removeprefix("torch."),
            "lora": {k: adapter_config.get(k) for k in ("r", "lora_alpha", "use_dora", "target_modules")},
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.chmod(0o755)
        if out_dir.exists():
            # A re-export replaces the old folder: move it aside first so the rename below cannot fail half-way.
            stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, out_dir)
    except OSError as err:
        raise StorageError(f"output_uri {out_dir}: the merged model could not be written ({err})") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def push_to_hub(folder: Path, repo_id: str, private: bool) -> str:
    """Uploads `folder` to `repo_id`; FailedPrecondition when there is no token or the hub cannot be reached."""
    from huggingface_hub import HfApi, get_token

    from vlmflow_worker.models import _hub_reachable

    token = get_token()
    if not token:
        raise FailedPrecondition(
            f"push_to_hub {repo_id!r}: no Hugging Face token on this worker; set HF_TOKEN (or run `hf auth login`) "
            f"and export again, or copy {folder} yourself"
        )
    if not _hub_reachable():
        raise FailedPrecondition(
            f"push_to_hub {repo_id!r}: the hub is unreachable from this worker; the merged model is at {folder}"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as err:  # huggingface_hub raises many kinds (HTTP, auth, network)
        raise FailedPrecondition(f"push_to_hub {repo_id!r} failed: {err}", detail=repr(err)) from err
    return getattr(info, "commit_url", f"https://huggingface.co/{repo_id}")


# ---------------------------------------------------------------------------------------------------------------
# The job


def validate(request: jobs_pb2.ExportRequest, settings: WorkerSettings) -> None:
    if not request.model.model_id:
        raise InvalidArgument("model.model_id is empty: name the base model the adapter was trained on")
    if not request.model.adapter_uri:
        raise InvalidArgument("model.adapter_uri is empty: name the adapter folder to merge into the base")
    adapter = resolve_uri(request.model.adapter_uri, settings, "model.adapter_uri")
    if not (adapter / "adapter_config.json").is_file():
        raise NotFound(f"model.adapter_uri {request.model.adapter_uri!r} is not an adapter folder")
    if not request.output_uri:
        raise InvalidArgument("output_uri is empty: name the folder for the merged model")
    resolve_uri(request.output_uri, settings, "output_uri")
    if request.push_to_hub and request.push_to_hub.count("/") != 1:
        raise InvalidArgument(f"push_to_hub {request.push_to_hub!r} must be a repo id like 'org/name'")
    if "eval_metrics_uri" in request.card:
        resolve_uri(request.card["eval_metrics_uri"], settings, "card.eval_metrics_uri")
    tracking_settings_of(request)


def run(request: jobs_pb2.ExportRequest, ctx: JobContext) -> JobResult:
    from vlmflow_worker.models import default_device

    spec = ModelSpec.from_proto(request.model, ctx.settings)
    out_dir = resolve_uri(request.output_uri, ctx.settings, "output_uri")
    card = dict(request.card)
    metrics = (
        resolve_uri(card["eval_metrics_uri"], ctx.settings, "card.eval_metrics_uri")
        if card.get("eval_metrics_uri")
        else None
    )
    ctx.progress("merging", step=0, total_steps=2)
    # The merge runs where the weights fit: a CUDA machine merges on the GPU, otherwise on CPU.
    export(spec, out_dir, card, metrics, device=default_device())
    ctx.raise_if_cancelled()
    artifacts = {"model": str(out_dir), "model_card": str(out_dir / "README.md")}
    if request.push_to_hub:
        ctx.progress("pushing to hub", step=1, total_steps=2)
        artifacts["hub"] = push_to_hub(out_dir, request.push_to_hub, request.private_repo)
    tracking = tracking_settings_of(request)
    if ctx.mlflow is not None and tracking.mlflow_registered_model:
        ctx.progress("registering in MLflow", step=1, total_steps=2)
        version = ctx.mlflow.register_model(out_dir)
        artifacts["registered_model"] = f"models:/{tracking.mlflow_registered_model}/{version}"
    ctx.progress("done", step=2, total_steps=2)
    size = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    return JobResult(artifacts=artifacts, metrics={"weights_bytes": float(size)})


JOB = JobSpec(request_type=jobs_pb2.ExportRequest, validate=validate, run=run)
