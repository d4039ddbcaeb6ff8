"""Evaluate: base and tuned variants on the same eval split, scored and reported, in process and over gRPC."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_export import make_adapter
from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.evaluate import job as evaluate
from vlmflow_worker.fixtures import synthetic
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.serve.settings import WorkerSettings


def prepared_dataset(root: Path, task: str, rows: int, preference: bool = False) -> Path:
    """A dataset folder in prep's output layout (dataset.json, eval.jsonl, images/), from a synthetic task."""
    raw = root / f"raw-{task}-{preference}"
    synthetic.generate(task, rows, seed=3, out=raw, preference=preference)
    folder = root / f"{task}-{'pref' if preference else 'sft'}"
    folder.mkdir(parents=True)
    shutil.copytree(raw / "images", folder / "images")
    lines = [json.loads(line) for line in (raw / "data.jsonl").read_text().splitlines()]
    (folder / "eval.jsonl").write_text("".join(json.dumps({"id": f"r{i}", **r}) + "\n" for i, r in enumerate(lines)))
    (folder / "train.jsonl").write_text("")
    kind = "preference" if preference else "sft"
    (folder / "dataset.json").write_text(json.dumps({"kind": kind, "fingerprint": "f" * 64, "eval": "eval.jsonl"}))
    return folder


@pytest.fixture(scope="module")
def adapter(tiny_model_path, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_path, tmp_path_factory.mktemp("eval") / "adapter")


def test_rows_and_default_metrics(tmp_path):
    sft = evaluate.to_eval_row(
        {
            "id": "a",
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            ],
            "images": ["images/0.png"],
            "answers": ["red", "dark red"],
        },
        0,
    )
    assert (sft.question, sft.references, len(sft.prompt)) == ("Colour?", ["red", "dark red"], 1)
    assert evaluate.default_metrics("sft", [sft], {}) == ["vqa_accuracy", "relaxed_accuracy", "anls"]
    long = dataclass_replace(sft, references=["a long caption of a red circle on white"])
    assert evaluate.default_metrics("sft", [long], {}) == ["cider", "bleu4", "rouge_l"]
    assert evaluate.default_metrics("preference", [sft], {})[0] == "preference_accuracy"
    assert evaluate.default_metrics("sft", [sft], {"metrics": ["cer"]}) == ["cer"]


def dataclass_replace(row, **changes):
    import dataclasses

    return dataclasses.replace(row, **changes)


def _request(tiny_model_path, dataset, adapter, out, **extra) -> jobs_pb2.EvaluateRequest:
    return jobs_pb2.EvaluateRequest(
        job_id="eval-1",
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        variants=[jobs_pb2.EvalVariant(name="lora", adapter_uri=str(adapter))],
        dataset_uri=str(dataset),
        generation=common_pb2.GenerationConfig(max_new_tokens=4),
        batch_size=4,
        max_samples=6,
        bootstrap_samples=200,
        output_uri=str(out),
        **extra,
    )


def test_evaluate_sft_split_in_process(tiny_model_path, adapter, tmp_path):
    dataset = prepared_dataset(tmp_path, "shape_colour", 8)
    settings = WorkerSettings(port=0, artifact_root=tmp_path, data_roots=[adapter.parent])
    request = _request(tiny_model_path, dataset, adapter, tmp_path / "report")
    evaluate.validate(request, settings)
    (tmp_path / "job").mkdir()
    result = evaluate.run(request, JobContext("eval-1", tmp_path / "job", settings))

    summary = json.loads(Path(result.artifacts["metrics"]).read_text())
    assert summary["variants"] == ["base", "lora"] and summary["num_samples"] == 6
    assert set(summary["metrics"]["lora"]) == {"vqa_accuracy", "relaxed_accuracy", "anls"}
    assert summary["comparisons"]["lora"]["vqa_accuracy"]["verdict"] in ("better", "worse", "no significant difference")
    lines = [json.loads(x) for x in Path(result.artifacts["predictions"]).read_text().splitlines()]
    assert len(lines) == 6 and set(lines[0]["predictions"]) == {"base", "lora"}
    assert lines[0]["references"] in (["red"], ["green"], ["blue"], ["yellow"])
    page = Path(result.artifacts["report"]).read_text()
    assert page.count("data:image/png;base64,") == 6
    assert "base/vqa_accuracy" in result.metrics and "lora/items_per_second" in result.metrics
    # The adapter changes the answers, and the base answers are the plain model's (adapters disabled).
    assert any(x["predictions"]["base"] != x["predictions"]["lora"] for x in lines)


def test_evaluate_preference_split_scores_the_base_at_chance(tiny_model_path, adapter, tmp_path):
    dataset = prepared_dataset(tmp_path, "count_dots", 6, preference=True)
    settings = WorkerSettings(port=0, artifact_root=tmp_path, data_roots=[adapter.parent])
    request = _request(tiny_model_path, dataset, adapter, tmp_path / "report")
    (tmp_path / "job").mkdir()
    result = evaluate.run(request, JobContext("eval-2", tmp_path / "job", settings))
    summary = json.loads(Path(result.artifacts["metrics"]).read_text())
    base = summary["metrics"]["base"]
    assert base["preference_accuracy"]["value"] == 0.5 and base["reward_margin"]["value"] == 0.0
    assert summary["metrics"]["lora"]["reward_margin"]["value"] != 0.0
    assert "chosen_pick_rate" in summary["metrics"]["lora"]


def test_bad_requests_name_the_field(tiny_model_path, adapter, tmp_path):
    from vlmflow_worker.errors import FailedPrecondition, InvalidArgument, NotFound, PathOutsideRoots

    dataset = prepared_dataset(tmp_path, "shape_colour", 2)
    settings = WorkerSettings(port=0, artifact_root=tmp_path, data_roots=[adapter.parent])
    good = _request(tiny_model_path, dataset, adapter, tmp_path / "r")
    bad_metric = _request(tiny_model_path, dataset, adapter, tmp_path / "r", metrics=["accuracy"])
    with pytest.raises(InvalidArgument, match="metrics: unknown accuracy"):
        evaluate.validate(bad_metric, settings)
    outside = jobs_pb2.EvaluateRequest()
    outside.CopyFrom(good)
    outside.dataset_uri = "../../etc"
    with pytest.raises(PathOutsideRoots, match="dataset_uri"):
        evaluate.validate(outside, settings)
    missing = jobs_pb2.EvaluateRequest()
    missing.CopyFrom(good)
    missing.variants[0].adapter_uri = str(tmp_path)
    with pytest.raises(NotFound, match=r"variants\[0\].adapter_uri"):
        evaluate.validate(missing, settings)
    quantized = jobs_pb2.EvaluateRequest()
    quantized.CopyFrom(good)
    quantized.model.quantization = common_pb2.QUANTIZATION_NF4
    with pytest.raises(FailedPrecondition, match="CUDA"):
        evaluate.validate(quantized, settings)
    twice = jobs_pb2.EvaluateRequest()
    twice.CopyFrom(good)
    twice.variants.append(jobs_pb2.EvalVariant(name="lora", adapter_uri=str(adapter)))
    with pytest.raises(InvalidArgument, match="unique"):
        evaluate.validate(twice, settings)


def test_evaluate_then_export_through_the_worker(worker, tiny_model_path, adapter):
    """The job kinds are wired: Evaluate streams to `completed` with the report; Export merges; a second
    Evaluate with the same job id replays the recorded result instead of running again."""
    root = worker.artifact_root
    dataset = prepared_dataset(root / "datasets", "shape_colour", 4)
    shutil.copytree(adapter, root / "adapters" / "lora", dirs_exist_ok=True)
    request = _request(tiny_model_path, dataset, "adapters/lora", "runs/grpc/eval")
    request.job_id = "grpc-eval"
    events = [r.event for r in worker.stub().Evaluate(request, timeout=300)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "completed", events[-1]
    assert "eval" in kinds and "progress" in kinds
    completed = events[-1].completed
    assert Path(completed.artifacts["report"]).is_file()
    assert 0.0 <= completed.metrics["lora/vqa_accuracy"] <= 1.0

    again = [r.event for r in worker.stub().Evaluate(request, timeout=60)]
    assert again[-1].completed.artifacts["report"] == completed.artifacts["report"]

    export = jobs_pb2.ExportRequest(
        job_id="grpc-export",
        model=common_pb2.ModelRef(model_id=str(tiny_model_path), adapter_uri="adapters/lora"),
        output_uri="runs/grpc/merged",
        card={"eval_metrics_uri": completed.artifacts["metrics"]},
    )
    events = [r.event for r in worker.stub().Export(export, timeout=300)]
    assert events[-1].WhichOneof("event") == "completed", events[-1]
    merged = Path(events[-1].completed.artifacts["model"])
    assert (merged / "model.safetensors").is_file() and "| vqa_accuracy |" in (merged / "README.md").read_text()

    bad = jobs_pb2.ExportRequest(job_id="grpc-export-bad", model=common_pb2.ModelRef(model_id=str(tiny_model_path)))
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        list(worker.stub().Export(bad, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "adapter_uri" in info.value.details()
