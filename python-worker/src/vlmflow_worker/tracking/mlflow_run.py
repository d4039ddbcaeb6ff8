"""The MLflow run of one pipeline run, shared by its jobs (training, evaluate, export).

- One pipeline run, one MLflow run: it is tagged `vlmflow.run_key` with the workflow id and first run id, and every
  job (a later stage, a retried or resumed one) finds it by that tag, so nothing logs into a second run.
- Reachable at the job's start or the job fails at once (FAILED_PRECONDITION, before any GPU time): a wrong address
  is found before hours of training, not after.
- Unreachable later, it never fails the training: per-step metrics go out from a background thread, wait while the
  server is down and follow when it answers (`MetricSender`); a failed upload is a warning in the job's log. What was
  not sent is still in the stage's training_log.jsonl and TensorBoard files. Only Export's model registration fails
  its job (retryably), as the model the run promised would otherwise be missing from the registry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmflow_worker.errors import FailedPrecondition, WorkerError
from vlmflow_worker.tracking.settings import TrackingSettings

RUN_KEY_TAG = "vlmflow.run_key"
# The MLflow client retries an unreachable server for minutes by default (7 retries, backoff factor 2) on every
# call; a job start should know in seconds. A worker's own environment still wins.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
MAX_PARAM_LENGTH = 6000  # MLflow's limit of a param value

log = logging.getLogger(__name__)


class MlflowRun:
    """A handle on the pipeline run's MLflow run; `warn` reports what could not be logged (the job's log)."""

    def __init__(self, settings: TrackingSettings, client, run_id: str, warn: Callable[[str], None]) -> None:
        self.settings = settings
        self.client = client
        self.run_id = run_id
        self.warn = warn

    @classmethod
    def open(cls, settings: TrackingSettings, warn: Callable[[str], None] = log.warning) -> MlflowRun:
        """The run tagged with settings.run_key in the experiment (both created when missing), marked RUNNING.
        FailedPrecondition, naming the address, when the server does not answer."""
        for name, value in CLIENT_ENV.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        uri = settings.mlflow_tracking_uri
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            run_id = _find_or_create(client, settings)
            client.update_run(run_id, status="RUNNING")
        except Exception as err:  # requests' connection errors, MlflowException: the server said no or said nothing
            raise FailedPrecondition(
                f"tracking.mlflow: the MLflow tracking server at {uri} could not be used ({_short(err)}); start it "
                "or correct tracking.mlflow.tracking_uri, then retry the run (no GPU time was spent on this stage)",
                detail=repr(err)[:2000],
            ) from err
        return cls(settings, client, run_id, warn)

    # -- what any job logs ------------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        """Params not logged yet. MLflow params are write-once: a value that differs from the logged one (an
        out-of-memory retry's halved micro-batch) is reported and left as it was."""
        from mlflow.entities import Param

        def send() -> None:
            logged = self.client.get_run(self.run_id).data.params
            values = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}
            changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
            if changed:
                self.warn(f"MLflow keeps the first value of params {', '.join(changed)}; this attempt's differ")
            new = [Param(k, v) for k, v in values.items() if k not in logged]
            for i in range(0, len(new), 100):  # MLflow's limit of params per batch
                self.client.log_batch(self.run_id, params=new[i : i + 100])

        self.best_effort("params", send)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.best_effort("metrics", lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifacts(self, local: Path, artifact_path: str) -> bool:
        """A file or a folder under artifact_path; False (with a warning) when the upload failed."""
        upload = self.client.log_artifacts if local.is_dir() else self.client.log_artifact
        return self.best_effort(str(local), lambda: upload(self.run_id, str(local), artifact_path))

    def log_table(self, table: dict[str, list[Any]], artifact_file: str) -> bool:
        return self.best_effort(
            artifact_file, lambda: self.client.log_table(self.run_id, data=table, artifact_file=artifact_file)
        )

    def logged_through(self, key: str) -> int:
        """The highest step of metric `key` already in the run (0 when none, or when the server does not answer)."""
        try:
            return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)
        except Exception as err:
            self.warn(f"MLflow: could not read the history of {key} ({_short(err)}); resumed steps may repeat there")
            return 0

    def set_status(self, status: str) -> None:
        self.best_effort(f"status {status}", lambda: self.client.update_run(self.run_id, status=status))

    def best_effort(self, what: str, call: Callable[[], Any]) -> bool:
        try:
            call()
            return True
        except Exception as err:
            self.warn(
                f"MLflow at {self.settings.mlflow_tracking_uri}: could not log {what} ({_short(err)}); the job goes on "
                "and the file stays in the run's folder"
            )
            return False

    def log_evaluation(self, summary: dict[str, Any], metrics: dict[str, float], files: dict[str, Path]) -> None:
        """Evaluate's results: every figure as metric `<stage>/<variant>/<metric>`, the table of metrics with their
        intervals and the comparison with the base (an MLflow table), and the report, metrics and predictions."""
        stage = self.settings.stage or "evaluate"
        self.log_metrics({f"{stage}/{name}": value for name, value in metrics.items()})
        columns = ("variant", "metric", "value", "low", "high", "delta_vs_base", "p_value", "verdict")
        table: dict[str, list[Any]] = {c: [] for c in columns}
        for variant, figures in summary["metrics"].items():
            for metric, entry in figures.items():
                against = summary["comparisons"].get(variant, {}).get(metric)  # None for the base itself
                delta, p_value, verdict = (
                    (against["delta"], against["p_value"], against["verdict"]) if against else (None, None, "base")
                )
                row = (variant, metric, entry["value"], entry["low"], entry["high"], delta, p_value, verdict)
                for column, value in zip(columns, row, strict=True):
                    table[column].append(value)
        self.log_table(table, f"{stage}/metrics_table.json")
        for path in files.values():
            self.log_artifacts(path, stage)

    # -- the model registry (Export) ----------------------------------------------------------------------------

    def register_model(self, model_dir: Path, artifact_path: str = "model") -> str:
        """Uploads the merged model into the run's artifacts and registers it under registered_model_name; returns
        the version. Idempotent: a version of this run already registered from that path is returned as it is (a
        retried export). Failures raise a retryable WorkerError: the model is on disk, the registry is not."""
        name = self.settings.mlflow_registered_model
        source = f"runs:/{self.run_id}/{artifact_path}"
        try:
            escaped = name.replace("'", "\\'")
            for version in self.client.search_model_versions(f"name = '{escaped}' and run_id = '{self.run_id}'"):
                if version.source == source:
                    return str(version.version)
            self.client.log_artifacts(self.run_id, str(model_dir), artifact_path)
            _create_registered_model(self.client, name)
            version = self.client.create_model_version(name, source=source, run_id=self.run_id)
            return str(version.version)
        except Exception as err:
            raise WorkerError(
                f"tracking.mlflow.registered_model_name {name!r}: the model was exported to {model_dir} but could not "
                f"be registered at {self.settings.mlflow_tracking_uri} ({_short(err)}); the stage is retried",
                detail=repr(err)[:2000],
            ) from err

    def metric_sender(self) -> MetricSender:
        return MetricSender(self.client, self.run_id)


class MetricSender:
    """Per-step metrics to MLflow from a background thread: the training loop only queues them, so a slow or
    unreachable server never slows or fails a step. While the server does not answer they wait, in order, and go
    out when it answers again. `notices()` hands what happened to the training thread, which writes the job's log
    (the event log has one writer)."""

    def __init__(self, client, run_id: str) -> None:
        self._client = client
        self._run_id = run_id
        self._queue: list[Any] = []
        self._notices: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._abandoned = False
        self._sending = False
        self._thread = threading.Thread(target=self._loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def add(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._cond:
            self._queue.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
            self._cond.notify_all()

    def notices(self) -> list[str]:
        with self._cond:
            out, self._notices = self._notices, []
        return out

    def flush(self, timeout: float) -> int:
        """Waits up to `timeout` seconds for the queue to empty; returns how many metrics are still unsent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._sending) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return len(self._queue)

    def close(self, timeout: float) -> int:
        """Sends what it can within `timeout` seconds, then stops; returns how many metrics were never sent."""
        unsent = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._abandoned = unsent > 0
            self._cond.notify_all()
        self._thread.join(5)
        return unsent

    def _loop(self) -> None:
        delay, down_since = 1.0, 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._abandoned or (self._closed and not self._queue):
                    return
                batch = self._queue[:MAX_BATCH]
                self._sending = True
            try:
                self._client.log_batch(self._run_id, metrics=batch)
            except Exception as err:
                with self._cond:
                    self._sending = False
                    if not down_since:
                        down_since = time.monotonic()
                        self._notices.append(
                            f"MLflow did not take metrics ({_short(err)}); training goes on and they are sent when "
                            "it answers again"
                        )
                    self._cond.notify_all()
                    self._cond.wait(delay)  # woken early by close()
                delay = min(delay * 2, 10.0)
                continue
            with self._cond:
                del self._queue[: len(batch)]
                self._sending = False
                if down_since:
                    self._notices.append(f"MLflow answers again after {time.monotonic() - down_since:.0f} s")
                self._cond.notify_all()
            delay, down_since = 1.0, 0.0


def _find_or_create(client, settings: TrackingSettings) -> str:
    from mlflow.exceptions import MlflowException

    name = settings.mlflow_experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name)
        except MlflowException:  # created meanwhile by another worker
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    key = settings.run_key.replace("'", "\\'")
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=settings.run_name, tags={RUN_KEY_TAG: settings.run_key})
    return run.info.run_id


def _create_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile; anything else raises again here


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]
