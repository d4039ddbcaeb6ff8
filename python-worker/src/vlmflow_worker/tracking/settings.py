"""TrackingSettings: a job's experiment tracking as its request says (TrackingConfig), checked before GPU time."""

from __future__ import annotations

import importlib.util
import urllib.parse
from dataclasses import dataclass, field

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class TrackingSettings:
    run_key: str = field(
        default="", metadata={"help": "The pipeline run (workflow id / first run id): one MLflow run per key."}
    )
    stage: str = field(default="", metadata={"help": "Stage name; the prefix of its MLflow params and metrics."})
    mlflow_tracking_uri: str = field(default="", metadata={"help": "MLflow tracking server (http/https); empty: off."})
    mlflow_experiment: str = field(default="", metadata={"help": "MLflow experiment, created when missing."})
    mlflow_run_name: str = field(default="", metadata={"help": "MLflow run name; empty: the workflow id."})
    mlflow_registered_model: str = field(
        default="", metadata={"help": "Export registers the merged model under this name; empty: no registration."}
    )
    wandb_project: str = field(default="", metadata={"help": "W&B project; empty: W&B off."})
    wandb_entity: str = field(default="", metadata={"help": "W&B team or user; empty: the API key's default."})

    @property
    def mlflow(self) -> bool:
        return bool(self.mlflow_tracking_uri)

    @property
    def wandb(self) -> bool:
        return bool(self.wandb_project)

    @property
    def run_name(self) -> str:
        """The MLflow run's name: as configured, else the workflow id (the run key's first part)."""
        return self.mlflow_run_name or self.run_key.split("/", 1)[0]

    @classmethod
    def from_proto(cls, tracking: jobs_pb2.TrackingConfig) -> TrackingSettings:
        values = {"run_key": tracking.run_key, "stage": tracking.stage}
        if tracking.HasField("mlflow"):
            m = tracking.mlflow
            if not m.tracking_uri.strip():
                raise InvalidArgument("tracking.mlflow.tracking_uri is empty: give the MLflow server's http(s) address")
            values |= {
                "mlflow_tracking_uri": m.tracking_uri.strip(),
                "mlflow_experiment": m.experiment_name.strip(),
                "mlflow_run_name": m.run_name.strip(),
                "mlflow_registered_model": m.registered_model_name.strip(),
            }
        if tracking.HasField("wandb"):
            if not tracking.wandb.project.strip():
                raise InvalidArgument("tracking.wandb.project is empty: name the W&B project, or leave out wandb")
            values |= {"wandb_project": tracking.wandb.project.strip(), "wandb_entity": tracking.wandb.entity.strip()}
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuses a section that cannot work, naming the field (every decoding of a request runs it)."""
        if self.mlflow:
            scheme = urllib.parse.urlparse(self.mlflow_tracking_uri).scheme
            if scheme not in ("http", "https"):
                raise InvalidArgument(
                    f"tracking.mlflow.tracking_uri {self.mlflow_tracking_uri!r} is not an http(s) address; give the "
                    "tracking server's, e.g. http://mlflow:5000"
                )
            if not self.mlflow_experiment:
                raise InvalidArgument("tracking.mlflow.experiment_name is empty: name the MLflow experiment")
            if not self.run_key:
                raise InvalidArgument(
                    "tracking.run_key is empty: the activity sets it to the pipeline run, which names the MLflow run"
                )

    def require_packages(self) -> None:
        """The clients the sections need are installed here: FailedPrecondition in the server, before the job."""
        if self.mlflow and importlib.util.find_spec("mlflow") is None:
            raise FailedPrecondition(
                "tracking.mlflow is set but this worker has no MLflow client; install the worker's requirements "
                "(mlflow-skinny) or leave out tracking.mlflow"
            )
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise FailedPrecondition(
                "tracking.wandb is set but the wandb package is not installed in the worker's environment; run "
                "`python-worker/.venv/bin/pip install wandb` on the worker (and set WANDB_API_KEY), or leave out "
                "tracking.wandb"
            )


def settings_of(request) -> TrackingSettings:
    """The tracking of a Train, Evaluate or Export request (validated); none for other requests."""
    if "tracking" not in request.DESCRIPTOR.fields_by_name:
        return TrackingSettings()
    return TrackingSettings.from_proto(request.tracking)
