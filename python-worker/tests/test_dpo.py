"""DPO: config mapping, the proof that it learns a preference on CPU, cancel + resume, and Train(kind DPO) over gRPC.

The proof uses a single-tile copy of the tiny model (`do_image_splitting` off: 16 image tokens per image instead of
80), so a step takes a fraction of a second on two shared cores; the code path is the production one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest
from safetensors import safe_open

from tests.resume_checks import (
    assert_resumed_from,
    assert_same_adapter,
    assert_same_curve,
    kill_after_checkpoint,
    step_values,
    train_process,
)
from tests.test_evaluate import prepared_dataset
from tests.test_export import make_adapter
from tests.test_sft import tensorboard_scalars
from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker import faults
from vlmflow_worker.errors import Cancelled, InvalidArgument, NotFound
from vlmflow_worker.evaluate import job as evaluate
from vlmflow_worker.jobs import eventlog
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train import dpo


@pytest.fixture(scope="module")
def single_tile_model(tiny_model_path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-single-tile"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"]["do_image_splitting"] = False
    (folder / "processor_config.json").write_text(json.dumps(config, indent=2))
    return folder


def preference_dataset(root: Path, rows: int, held_out: int) -> Path:
    """shape_colour preference rows (chosen = the right colour, rejected = a wrong one), split train / eval."""
    folder = prepared_dataset(root, "shape_colour", rows, preference=True)
    lines = (folder / "eval.jsonl").read_text().splitlines(keepends=True)
    (folder / "train.jsonl").write_text("".join(lines[: rows - held_out]))
    (folder / "eval.jsonl").write_text("".join(lines[rows - held_out :]))
    meta = {"kind": "preference", "fingerprint": "p" * 64, "train": "train.jsonl", "eval": "eval.jsonl"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def train_request(model: Path, dataset: Path, output: Path, **training) -> jobs_pb2.TrainRequest:
    defaults = dict(
        learning_rate=2e-3,
        max_steps=24,
        micro_batch_size=8,
        gradient_accumulation_steps=1,
        lr_scheduler="constant",
        save_steps=12,
        logging_steps=4,
        seed=1,
    )
    return jobs_pb2.TrainRequest(
        job_id="dpo",
        kind=jobs_pb2.TRAIN_KIND_DPO,
        model=common_pb2.ModelRef(model_id=str(model)),
        dataset_uri=str(dataset),
        output_uri=str(output),
        lora=jobs_pb2.LoraConfig(r=16, alpha=32, dropout=0.0),
        training=jobs_pb2.TrainingConfig(**{**defaults, **training}),
        dpo=jobs_pb2.DpoConfig(beta=0.1, loss_type="sigmoid"),
    )


def test_config_from_request():
    request = train_request(Path("m"), Path("d"), Path("o"))
    request.dpo.loss_type = "sigmoid, sft"
    config = dpo.DPOTrainConfig.from_request(request, "d", "o", adapter_dir="a")
    assert config.loss_type == ["sigmoid", "sft"] and config.beta == 0.1 and config.adapter_dir == "a"
    assert (config.lora_r, config.learning_rate, config.max_steps) == (16, 2e-3, 24)
    request.training.ClearField("learning_rate")
    assert dpo.DPOTrainConfig.from_request(request, "d", "o").learning_rate == 5e-5  # DPO's default, not SFT's
    request.training.learning_rate = 0  # a zero that is sent is a value: refused, never read as "the default"
    with pytest.raises(InvalidArgument, match="training.learning_rate must be > 0"):
        dpo.DPOTrainConfig.from_request(request, "d", "o")
    request.training.learning_rate = 2e-3
    request.dpo.loss_type = "dpo"
    with pytest.raises(InvalidArgument, match="dpo.loss_type 'dpo'"):
        dpo.DPOTrainConfig.from_request(request, "d", "o")
    with pytest.raises(InvalidArgument, match="dpo.beta"):
        dpo.DPOTrainConfig(beta=-1)


def test_dpo_learns_the_preference(single_tile_model, tmp_path):
    """After DPO from the base: held-out implicit-reward accuracy well above chance, margins grew, and greedy
    answers are the chosen ones far more often than before."""
    dataset = preference_dataset(tmp_path, rows=128, held_out=32)
    settings = WorkerSettings(port=0, artifact_root=tmp_path)
    request = train_request(single_tile_model, dataset, tmp_path / "run")
    dpo.validate(request, settings)
    (tmp_path / "job").mkdir()
    result = dpo.run(request, JobContext("dpo", tmp_path / "job", settings))

    # Progress carries DPO's figures; checkpoints were announced; the adapter holds the policy only.
    events = eventlog.read_events(tmp_path / "job" / eventlog.EVENTS)
    figures = [e.progress.metrics for e in events if "rewards/margins" in e.progress.metrics]
    margins = [f["rewards/margins"] for f in figures]
    assert len(margins) >= 3 and margins[-1] > margins[0] and margins[-1] > 0.1
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies"} <= set(figures[-1])
    assert [e.checkpoint_saved.step for e in events if e.HasField("checkpoint_saved")] == [12, 24]
    adapter = Path(result.artifacts["adapter"])
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and not any(".ref." in n for n in names)
    assert not (adapter / "ref").exists()

    # Held-out: the base against the DPO adapter, same prompts, greedy.
    report = evaluate.run(
        jobs_pb2.EvaluateRequest(
            job_id="dpo-eval",
            model=common_pb2.ModelRef(model_id=str(single_tile_model)),
            variants=[
                jobs_pb2.EvalVariant(
                    name="dpo", adapter_uri=str(adapter), training_log_uri=str(tmp_path / "job" / "events.jsonl")
                )
            ],
            dataset_uri=str(dataset),
            batch_size=16,
            bootstrap_samples=300,
            output_uri=str(tmp_path / "report"),
        ),
        JobContext("dpo-eval", tmp_path / "job", settings),
    ).metrics
    print({k: round(v, 3) for k, v in report.items()})
    assert report["base/preference_accuracy"] == 0.5
    assert report["dpo/preference_accuracy"] >= 0.75
    assert report["dpo/reward_margin"] > 0.1
    assert report["dpo/chosen_pick_rate"] >= report["base/chosen_pick_rate"] + 0.25
    assert report["dpo/preference_accuracy/better"] == 1.0
    assert "DPO reward margin" in (tmp_path / "report" / "report.html").read_text()


def test_cancel_saves_a_checkpoint_and_the_next_run_resumes(single_tile_model, tmp_path):
    dataset = preference_dataset(tmp_path, rows=24, held_out=4)
    settings = WorkerSettings(port=0, artifact_root=tmp_path)
    request = train_request(
        single_tile_model, dataset, tmp_path / "run", max_steps=3, save_steps=100, micro_batch_size=2, logging_steps=1
    )
    job = tmp_path / "job"
    job.mkdir()
    (job / eventlog.CANCEL).touch()
    with pytest.raises(Cancelled, match="cancelled at step 1"):
        dpo.run(request, JobContext("dpo", job, settings))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-1").is_dir()
    assert dpo.resume_point(request, settings)[0] == 1

    (job / eventlog.CANCEL).unlink()
    ctx = JobContext("dpo", job, settings)
    result = dpo.run(request, ctx)
    assert result.metrics["global_step"] == 3.0
    logs = [e.log.message for e in eventlog.read_events(job / eventlog.EVENTS) if e.HasField("log")]
    assert any("resuming from" in m and "checkpoint-1" in m for m in logs)
    # DPO's TensorBoard files too, beside its checkpoints: one point per step across the cancel and the resume.
    losses = [step for step, _ in tensorboard_scalars(Path(result.artifacts["tensorboard"]), "train/loss")]
    assert losses == [1, 2, 3]
    assert tensorboard_scalars(Path(result.artifacts["tensorboard"]), "train/rewards/margins")


def test_train_dpo_from_an_sft_adapter_through_the_worker(worker, tiny_model_path, tmp_path_factory):
    root = worker.artifact_root
    dataset = preference_dataset(root / "datasets" / "dpo", rows=12, held_out=4)
    make_adapter(tiny_model_path, root / "adapters" / "sft")
    request = train_request(tiny_model_path, dataset, root / "runs" / "dpo-grpc", max_steps=2, micro_batch_size=2)
    request.job_id = "grpc-dpo"
    request.model.adapter_uri = "adapters/sft"
    events = [r.event for r in worker.stub().Train(request, timeout=300)]
    assert events[-1].WhichOneof("event") == "completed", events[-1]
    assert events[0].accepted.kind == jobs_pb2.JOB_KIND_TRAIN_DPO
    adapter = Path(events[-1].completed.artifacts["adapter"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4  # the SFT adapter continued, not a new one

    sft_rows = prepared_dataset(root / "datasets" / "dpo-sft", "shape_colour", 4)
    bad = train_request(tiny_model_path, sft_rows, root / "runs" / "dpo-bad")
    bad.job_id = "grpc-dpo-bad"
    with pytest.raises(grpc.RpcError) as info:
        list(worker.stub().Train(bad, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "preference rows" in info.value.details()


def test_dpo_from_sft_killed_mid_training_resumes_with_the_policy_it_had(single_tile_model, tmp_path):
    """SIGKILL a DPO run that continues an SFT adapter after checkpoint-4, resume it: every step's loss and the final
    adapter equal an uninterrupted run's. (transformers alone would reload only TRL's frozen "ref" adapter from the
    checkpoint and restart the policy from its SFT weights.)"""
    dataset = preference_dataset(tmp_path, rows=40, held_out=4)
    sft = make_adapter(single_tile_model, tmp_path / "sft" / "adapter")

    def request(output: str) -> jobs_pb2.TrainRequest:
        r = train_request(
            single_tile_model, dataset, tmp_path / output, max_steps=8, save_steps=2, logging_steps=1,
            micro_batch_size=4, eval_steps=0,
        )  # fmt: skip
        r.model.adapter_uri = str(sft)
        return r

    assert train_process("dpo", request("whole"), tmp_path, "whole").wait(timeout=600) == 0
    killed = train_process("dpo", request("killed"), tmp_path, "killed", {faults.HANG_AT_STEP: "5"})
    kill_after_checkpoint(killed, tmp_path / "killed" / "checkpoints" / "checkpoint-4")
    assert not (tmp_path / "killed" / "adapter").exists()
    assert train_process("dpo", request("killed"), tmp_path, "killed").wait(timeout=600) == 0

    assert_resumed_from(tmp_path / "killed-job", "checkpoint-4")
    assert_same_curve(step_values(tmp_path / "whole", "loss"), step_values(tmp_path / "killed", "loss"), steps=8)
    assert_same_adapter(tmp_path / "whole" / "adapter", tmp_path / "killed" / "adapter", moved_from=sft)

    # Evaluate measures each variant's implicit reward against what it trained with: the DPO adapter against its
    # SFT adapter (beta 0.1, as trained), the SFT adapter against the base.
    settings = WorkerSettings(port=0, artifact_root=tmp_path)
    (tmp_path / "eval-job").mkdir()
    variants = [
        jobs_pb2.EvalVariant(name="sft", adapter_uri=str(sft)),
        jobs_pb2.EvalVariant(name="dpo", adapter_uri=str(tmp_path / "killed" / "adapter")),
    ]
    evaluate.run(
        jobs_pb2.EvaluateRequest(
            job_id="eval", model=common_pb2.ModelRef(model_id=str(single_tile_model)), variants=variants,
            dataset_uri=str(dataset), max_samples=4, bootstrap_samples=10, output_uri=str(tmp_path / "report"),
        ),
        JobContext("eval", tmp_path / "eval-job", settings),
    )  # fmt: skip
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert summary["preference_reference"] == {
        "sft": {"reference": "base model", "beta": 0.1},
        "dpo": {"reference": str(sft), "beta": 0.1},
    }


def test_preference_metrics_use_the_reference_and_beta_each_variant_trained_with(tmp_path):
    def adapter(name: str, **trained) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        (folder / "training_config.json").write_text(json.dumps(trained))
        return str(folder)

    sft = adapter("sft", learning_rate=1e-4)
    other = adapter("other-sft", learning_rate=1e-4)
    variants = [jobs_pb2.EvalVariant(name=n) for n in ("base", "sft", "dpo", "dpo-base", "dpo-other")]
    adapters = {
        "sft": sft,
        "dpo": adapter("dpo", beta=0.3, adapter_dir=sft),
        "dpo-base": adapter("dpo-base", beta=0.5, adapter_dir=""),
        "dpo-other": adapter("dpo-other", beta=0.2, adapter_dir=other),
    }
    refs = evaluate.references(variants, adapters)
    assert refs["sft"] == evaluate.Reference("base", evaluate.IMPLICIT_REWARD_BETA, "")
    assert refs["dpo"] == evaluate.Reference("sft", 0.3, sft)  # the SFT variant's log-probs, not the base's
    assert refs["dpo-base"] == evaluate.Reference("base", 0.5, "")
    assert refs["dpo-other"] == evaluate.Reference(evaluate.REFERENCE_PREFIX + other, 0.2, other)  # loaded for it
    shutil.rmtree(other)
    with pytest.raises(NotFound, match="DPO-trained against the adapter .*other-sft"):
        evaluate.references(variants, adapters)


def test_dora_on_text_and_vision_gets_gradients_under_checkpointing(single_tile_model, tmp_path):
    """DoRA on the text model and the vision tower, gradient checkpointing on: every LoRA B matrix, vision ones
    included, moved off its zero init, so gradients reached them."""
    dataset = preference_dataset(tmp_path, rows=8, held_out=2)
    settings = WorkerSettings(port=0, artifact_root=tmp_path)
    request = train_request(single_tile_model, dataset, tmp_path / "run", max_steps=2, micro_batch_size=2)
    request.lora.use_dora = True
    request.lora.tune_vision = True
    request.training.gradient_checkpointing = True
    (tmp_path / "job").mkdir()
    result = dpo.run(request, JobContext("dpo", tmp_path / "job", settings))
    with safe_open(Path(result.artifacts["adapter"]) / "adapter_model.safetensors", "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    b_matrices = {n: t for n, t in tensors.items() if "lora_B" in n}
    assert any("vision_model" in n for n in b_matrices) and any("text_model" in n for n in b_matrices)
    assert any("lora_magnitude_vector" in n for n in tensors)  # DoRA
    still_zero = [n for n, t in b_matrices.items() if not t.abs().sum() > 0]
    assert not still_zero, still_zero[:3]
