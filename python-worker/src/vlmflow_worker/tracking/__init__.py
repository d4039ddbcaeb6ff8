"""Experiment tracking: TensorBoard files of every training stage, an MLflow run per pipeline run, W&B when asked.

- `settings.py`: TrackingSettings, a request's TrackingConfig, checked before GPU time;
- `mlflow_run.py`: the pipeline run's MLflow run (found by its run key), metrics sent in the background, artifacts,
  the model registry;
- `trainer.py`: what any trainer attaches (TensorBoard beside the checkpoints, MLflow, W&B's report_to);
- here: the job-level part the job process runs for every Train, Evaluate and Export job (`open_for`, `ended`).
"""

from __future__ import annotations

from vlmflow_worker.errors import Cancelled, Stuck
from vlmflow_worker.tracking.mlflow_run import MlflowRun
from vlmflow_worker.tracking.settings import TrackingSettings, settings_of

__all__ = ["MlflowRun", "TrackingSettings", "ended", "open_for", "settings_of"]


def open_for(request, ctx) -> MlflowRun | None:
    """The job's MLflow run when its request asks for one, opened before the job's work starts: an unreachable
    server fails the job here (FAILED_PRECONDITION), before any model is loaded."""
    settings = settings_of(request)
    return MlflowRun.open(settings, ctx.warning) if settings.mlflow else None


def ended(run: MlflowRun | None, error: BaseException | None) -> None:
    """Marks the MLflow run with how the job ended: the next stage's job marks it RUNNING again, so after the last
    stage it reads FINISHED, or FAILED / KILLED where the run stopped."""
    if run is None:
        return
    if error is None:
        run.set_status("FINISHED")
    elif isinstance(error, Cancelled | Stuck):
        run.set_status("KILLED")
    else:
        run.set_status("FAILED")
