"""Tracking settings, W&B's report_to and run ids, and TensorBoard files rewound to a checkpoint (no server needed;
tests/test_tracking_mlflow.py runs against a real MLflow server, test_sft.py reads a resumed run's event files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import InvalidArgument
from vlmflow_worker.tracking.settings import TrackingSettings
from vlmflow_worker.tracking.trainer import keep_through, report_to_of, wandb_env


def scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def write(logdir: Path, steps: range, offset: float) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    for step in steps:
        writer.add_scalar("train/loss", step + offset, step)
    writer.close()


def test_a_resumed_stage_draws_one_curve_not_two(tmp_path: Path) -> None:
    logdir = tmp_path / "tensorboard"
    write(logdir, range(1, 8), 0.0)  # killed at step 7; its newest checkpoint is step 4
    keep_through(logdir, 4)
    assert scalars(logdir, "train/loss") == [(s, s + 0.0) for s in range(1, 5)]
    write(logdir, range(5, 11), 0.5)  # the resumed attempt
    assert scalars(logdir, "train/loss") == [(s, s + 0.0) for s in range(1, 5)] + [(s, s + 0.5) for s in range(5, 11)]

    keep_through(logdir, 10)  # a second resume at the end: nothing lost, nothing doubled
    assert [s for s, _ in scalars(logdir, "train/loss")] == list(range(1, 11))
    keep_through(logdir, 0)  # a stage that starts over keeps nothing
    assert not list(logdir.glob("events.out.tfevents.*"))


def test_an_interrupted_rewrite_is_finished_by_the_next(tmp_path: Path) -> None:
    logdir = tmp_path / "tensorboard"
    write(logdir, range(1, 7), 0.0)
    keep_through(logdir, 6)
    kept = set(logdir.iterdir())
    write(logdir, range(1, 7), 0.0)  # as if killed before the old file was removed: every point twice
    assert len(scalars(logdir, "train/loss")) == 12
    keep_through(logdir, 3)
    assert scalars(logdir, "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert not kept & set(logdir.iterdir())


def test_tracking_sections_are_checked_naming_the_field() -> None:
    def settings(**mlflow) -> TrackingSettings:
        config = jobs_pb2.MlflowConfig(**({"experiment_name": "e"} | mlflow))
        return TrackingSettings.from_proto(jobs_pb2.TrackingConfig(run_key="wf/r", stage="sft", mlflow=config))

    ok = settings(tracking_uri=" http://mlflow:5000 ", run_name="")
    assert ok.mlflow and ok.mlflow_tracking_uri == "http://mlflow:5000" and ok.run_name == "wf"
    assert TrackingSettings.from_proto(jobs_pb2.TrackingConfig()).mlflow is False
    for bad, field in [
        ({"tracking_uri": ""}, "tracking.mlflow.tracking_uri"),
        ({"tracking_uri": "mlflow:5000"}, "tracking.mlflow.tracking_uri"),
        ({"tracking_uri": "http://m", "experiment_name": ""}, "tracking.mlflow.experiment_name"),
    ]:
        with pytest.raises(InvalidArgument, match=field):
            settings(**bad)
    with pytest.raises(InvalidArgument, match="tracking.run_key"):
        TrackingSettings.from_proto(
            jobs_pb2.TrackingConfig(mlflow=jobs_pb2.MlflowConfig(tracking_uri="http://m", experiment_name="e"))
        )
    with pytest.raises(InvalidArgument, match="tracking.wandb.project"):
        TrackingSettings.from_proto(jobs_pb2.TrackingConfig(wandb=jobs_pb2.WandbConfig(project=" ")))


def test_wandb_goes_through_report_to_with_one_run_per_stage_resumed_by_its_id(tmp_path: Path) -> None:
    sft = TrackingSettings(run_key="wf/r1", stage="sft", wandb_project="p", wandb_entity="team")
    assert report_to_of(sft) == ["wandb"] and report_to_of(TrackingSettings()) == []
    env = wandb_env(sft, tmp_path)
    assert env["WANDB_PROJECT"] == "p" and env["WANDB_ENTITY"] == "team" and env["WANDB_RESUME"] == "allow"
    assert env["WANDB_RUN_GROUP"] == "wf" and env["WANDB_NAME"] == "wf/sft" and env["WANDB_DIR"] == str(tmp_path)
    assert wandb_env(sft, tmp_path)["WANDB_RUN_ID"] == env["WANDB_RUN_ID"]  # a resumed attempt: the same run
    dpo = TrackingSettings(run_key="wf/r1", stage="dpo", wandb_project="p")
    assert wandb_env(dpo, tmp_path)["WANDB_RUN_ID"] != env["WANDB_RUN_ID"] and "WANDB_ENTITY" not in wandb_env(
        dpo, tmp_path
    )


def test_a_training_stage_writes_its_losses_and_evaluations_beside_its_checkpoints(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train_sft in process, 3 steps, evaluated at steps 2 and 3: every point in `<output>/tensorboard`, none in
    transformers' default `runs/` folder of the working directory."""
    from tests.test_bench_prep_pool import prepare
    from vlmflow_worker.fixtures.synthetic import generate
    from vlmflow_worker.train.config import SFTConfig
    from vlmflow_worker.train.sft import train_sft

    monkeypatch.chdir(tmp_path)
    generate("shape_colour", 20, 0, tmp_path / "artifacts" / "shapes")
    dataset = prepare(tmp_path / "artifacts", tmp_path / "artifacts" / "shapes" / "data.jsonl", tiny_model_path, "prep")
    config = SFTConfig(
        model_id=str(tiny_model_path), dataset_dir=str(dataset), output_dir=str(tmp_path / "sft"), max_steps=3,
        micro_batch_size=2, gradient_accumulation_steps=1, eval_steps=2, save_steps=10, logging_steps=1,
        gradient_checkpointing=False,
    )  # fmt: skip
    result = train_sft(config)
    logdir = Path(result.artifacts["tensorboard"])
    assert logdir == tmp_path / "sft" / "tensorboard"
    assert [s for s, _ in scalars(logdir, "train/loss")] == [1, 2, 3]
    assert [s for s, _ in scalars(logdir, "eval/loss")] == [2, 3]
    assert not (tmp_path / "runs").exists()
