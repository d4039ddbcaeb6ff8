"""Experiment tracking of a training stage, for any trainer built on transformers' Trainer (SFT, DPO, GRPO).

`training_arguments` asks for `report_to_of(config.tracking)`; `train_resuming` calls `attach` before
`trainer.train`; `save_adapter` calls `finish` once the adapter is on disk. Nothing else in a trainer changes:

- TensorBoard, always: event files in `<output_uri>/tensorboard`, beside `checkpoints/` (transformers'
  TensorBoardCallback: train/loss, train/learning_rate, train/grad_norm, eval/*, flushed at every log). A resumed
  stage keeps one curve: before it resumes from the checkpoint at step N, the files are rewritten to hold what was
  logged through step N and nothing later (`keep_through`), so the steps it trains again replace the lost ones
  instead of drawing a second line over them.
- MLflow, when `tracking.mlflow` is set: the stage's settings as params `<stage>.<name>`, every logged figure as
  metric `<stage>/<name>` at its step (sent from a background thread, see mlflow_run.py), the adapter as artifacts
  under `<stage>/adapter`. A resumed stage skips the steps the run already holds.
- Weights & Biases, when `tracking.wandb` is set: transformers' WandbCallback through `report_to`, one W&B run per
  stage with an id made from the pipeline run and stage (so a resumed stage continues it), grouped by workflow id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlmflow_worker.tracking.mlflow_run import MetricSender, MlflowRun
from vlmflow_worker.tracking.settings import TrackingSettings

TENSORBOARD_DIR = "tensorboard"
EVENT_FILES = "events.out.tfevents.*"
# How long a checkpoint or the end of training waits for metrics MLflow has not taken yet: briefly (a cancel must stop
# within the worker's grace), longer once the adapter is saved and nothing else is left to do.
STOP_FLUSH_SECONDS = 5.0
FINISH_FLUSH_SECONDS = 60.0


def tracking_of(config: Any) -> TrackingSettings:
    """A stage config's tracking (SFTConfig and the configs built on it carry one); none for a config without."""
    return getattr(config, "tracking", None) or TrackingSettings()


def report_to_of(tracking: TrackingSettings) -> list[str]:
    """TrainingArguments.report_to: W&B when asked. TensorBoard and MLflow are attached by `attach` instead, to
    choose their folder and run (transformers would put TensorBoard in a new folder per start, and MLflow in a new
    run per stage)."""
    return ["wandb"] if tracking.wandb else []


def attach(trainer, config: Any, output: Path, resume_step: int, ctx=None) -> None:
    """Adds the tracking of the stage `config` describes (its `tracking` field) to `trainer`, about to train from
    `resume_step` (0: from the start)."""
    tracking = tracking_of(config)
    if tracking.wandb:
        os.environ.update(wandb_env(tracking, output))
    if not trainer.is_world_process_zero():
        return  # rank 0 logs for all
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    logdir = output / TENSORBOARD_DIR
    keep_through(logdir, resume_step)
    board = TensorBoardCallback(SummaryWriter(log_dir=str(logdir)))
    board.logging_dir = str(logdir)  # where it reopens a writer for an evaluation after training (else ./runs)
    trainer.add_callback(board)
    if tracking.mlflow:
        warn = ctx.warning if ctx is not None else logging.getLogger(__name__).warning  # the job's log, or ours
        # The job process opened it before loading the model (jobs/child.py); a torchrun rank opens its own.
        run = getattr(ctx, "mlflow", None) or MlflowRun.open(tracking, warn)
        trainer.add_callback(MlflowCallback(run, tracking.stage, params_of(config), resume_step, warn))


def finish(trainer, adapter: Path | None) -> None:
    """After the adapter is saved: the metrics MLflow has not taken yet, then the adapter."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, MlflowCallback):
            callback.finish(adapter)


def params_of(config: Any) -> dict[str, Any]:
    """A stage config's fields as params (its tracking settings left out)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "tracking"}


class MlflowCallback(TrainerCallback):
    """Trainer logs -> the pipeline run's MLflow run, prefixed with the stage."""

    def __init__(self, run: MlflowRun, stage: str, params: dict[str, Any], resume_step: int, warn) -> None:
        self.run = run
        self.stage = stage or "train"
        self.params = params
        self.resume_step = resume_step
        self.warn = warn
        self.skip_through = 0
        self.sender: MetricSender | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.run.log_params({f"{self.stage}.{k}": v for k, v in self.params.items()})
        if self.resume_step:  # steps after the checkpoint an earlier attempt already sent: not twice
            self.skip_through = self.run.logged_through(f"{self.stage}/loss")
        self.sender = self.sender or self.run.metric_sender()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.sender is None:
            self.sender = self.run.metric_sender()
        numbers = {
            f"{self.stage}/{k}": float(v)
            for k, v in (logs or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if numbers and state.global_step > self.skip_through:
            self.sender.add(numbers, state.global_step)
        if control.should_save:
            # A checkpoint follows: what was logged up to it reaches MLflow first (when it answers), since a resume
            # from that checkpoint does not log those steps again.
            self.sender.flush(STOP_FLUSH_SECONDS)
        self._relay()

    def on_train_end(self, args, state, control, **kwargs):
        if self.sender is not None:
            self.sender.flush(STOP_FLUSH_SECONDS)
        self._relay()

    def finish(self, adapter: Path | None) -> None:
        if self.sender is not None:
            unsent = self.sender.close(FINISH_FLUSH_SECONDS)
            self._relay()
            if unsent:
                self.warn(
                    f"MLflow did not take {unsent} metrics of {self.stage}; they are in the stage's training_log.jsonl "
                    "and TensorBoard files"
                )
            self.sender = None
        if adapter is not None:
            self.run.log_artifacts(adapter, f"{self.stage}/adapter")

    def _relay(self) -> None:
        if self.sender is not None:
            for notice in self.sender.notices():
                self.warn(notice)


def wandb_env(tracking: TrackingSettings, output: Path) -> dict[str, str]:
    """What transformers' WandbCallback and wandb.init read: the same run id for every attempt of a stage, so a
    resumed stage continues its W&B run (resume "allow"); the stages of a pipeline run grouped by workflow id."""
    workflow = tracking.run_key.split("/", 1)[0] or "vlmflow"
    run_id = hashlib.sha256(f"{tracking.run_key}\0{tracking.stage}".encode()).hexdigest()[:32]
    env = {
        "WANDB_PROJECT": tracking.wandb_project,
        "WANDB_RUN_ID": run_id,
        "WANDB_RESUME": "allow",
        "WANDB_RUN_GROUP": workflow,
        "WANDB_NAME": f"{workflow}/{tracking.stage}" if tracking.stage else workflow,
        "WANDB_JOB_TYPE": tracking.stage or "train",
        "WANDB_DIR": str(output),
    }
    if tracking.wandb_entity:
        env["WANDB_ENTITY"] = tracking.wandb_entity
    return env


def keep_through(logdir: Path, step: int) -> None:
    """Rewrites the TensorBoard event files under `logdir` to hold only what was logged at steps <= `step` (all of
    it gone for step 0: a stage that starts over). Each (tag, step) once, the latest write winning, so a rewrite
    interrupted between writing the new file and removing the old ones is finished by the next."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    old = sorted(logdir.glob(EVENT_FILES))  # names start with the creation time: oldest first
    if not old:
        return
    kept: dict[tuple[str, int], Any] = {}
    for path in old:
        for event in _events(path, event_pb2):
            if event.HasField("summary") and event.step <= step:
                for value in event.summary.value:
                    single = event_pb2.Event(wall_time=event.wall_time, step=event.step)
                    single.summary.value.add().CopyFrom(value)
                    kept[(value.tag, event.step)] = single
    if kept:
        writer = EventFileWriter(str(logdir), filename_suffix=".kept")
        for event in sorted(kept.values(), key=lambda e: (e.step, e.wall_time)):
            writer.add_event(event)
        writer.close()
    for path in old:
        path.unlink()


def _events(path: Path, event_pb2):
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    for record in RawEventFileLoader(str(path)).Load():
        yield event_pb2.Event.FromString(record)
