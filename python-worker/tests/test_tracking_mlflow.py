"""MLflow tracking against a real tracking server this module starts (`mlflow server`, SQLite backend store, on a
free port): a SIGKILLed and resumed SFT stage, whose server also goes down and comes back mid-run, then Evaluate
and Export, all log into one MLflow run, read back through the MLflow client: params, the loss history step for
step, the evaluation table and report, the adapter, the registered model version. A server that does not answer at
a job's start fails the job at once, naming its address; W&B asked for without the wandb package is refused."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.tracking.mlflow_run import RUN_KEY_TAG

from .conftest import WorkerProcess, start_worker
from .test_sft import kinds, losses, prepared_shapes, train_request

os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")

EXPERIMENT = "tracking-test"
RUN_KEY = "tracking-wf/run-1"
MODEL_NAME = "vlmflow-tiny"
# The tracking server runs from its own venv (scripts/setup.sh, mlflow-server.lock), as on its own host: full `mlflow`
# in the worker's venv would bring scikit-learn into every process the tests start.
SERVER_ENV = "VLMFLOW_MLFLOW_SERVER"
MLFLOW_SERVER = Path(
    os.environ.get(SERVER_ENV) or Path(__file__).resolve().parents[2] / ".tools" / "mlflow-server" / "bin" / "mlflow"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` as a subprocess; stop() and start() again keep its port and SQLite store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        mlflow = MLFLOW_SERVER
        if not mlflow.is_file():
            raise RuntimeError(f"no MLflow server at {mlflow}: scripts/setup.sh installs it (or set {SERVER_ENV})")
        command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.folder / "server.log", "a")  # noqa: SIM115 (the process holds it)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer in {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracked_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker whose training steps take 0.4 s more (faults.STEP_SECONDS), so the server's outage lands mid-run."""
    data = tmp_path_factory.mktemp("tracking-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLMFLOW_FAULT_STEP_SECONDS", "0.4")
        proc = start_worker(tmp_path_factory.mktemp("tracking-artifacts"), "--data-root", str(data))
    proc.data = data  # type: ignore[attr-defined]
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=60)


@pytest.fixture(scope="module")
def dataset(tracked_worker: WorkerProcess, tiny_model_path: Path) -> Path:
    return prepared_shapes(tracked_worker, tiny_model_path, 40)


def tracking(uri: str, stage: str, **mlflow) -> jobs_pb2.TrackingConfig:
    return jobs_pb2.TrackingConfig(
        run_key=RUN_KEY,
        stage=stage,
        mlflow=jobs_pb2.MlflowConfig(tracking_uri=uri, experiment_name=EXPERIMENT, **mlflow),
    )


def log_lines(events) -> list[str]:
    return [e.log.message for e in events if e.WhichOneof("event") == "log"]


def test_one_pipeline_run_is_one_mlflow_run_through_a_kill_an_outage_evaluate_and_export(
    tracked_worker: WorkerProcess, tiny_model_path: Path, dataset: Path, mlflow_server: MlflowServer
) -> None:
    from mlflow.tracking import MlflowClient

    stub = tracked_worker.stub()
    request = train_request("sft", tiny_model_path, dataset, "runs/sft", max_steps=8, eval_steps=4, save_steps=4)
    request.tracking.CopyFrom(tracking(mlflow_server.uri, "sft"))

    # 1. SFT, SIGKILLed once its step-4 checkpoint is saved.
    first = []
    for response in stub.Train(request, timeout=300):
        first.append(response.event)
        if response.event.WhichOneof("event") == "checkpoint_saved" and response.event.checkpoint_saved.step == 4:
            os.kill(int((tracked_worker.artifact_root / "jobs" / "sft" / "child.pid").read_text()), signal.SIGKILL)
    assert first[-1].failed.reason == jobs_pb2.FAILURE_REASON_INTERNAL, first[-1]

    # 2. The retry resumes from step 4; the server goes down at its first step and comes back (a fresh process on
    #    the same store) while the job trains on: what it logged meanwhile waits and follows.
    second, outage = [], False
    for response in stub.Train(request, timeout=600):
        second.append(response.event)
        if response.event.WhichOneof("event") == "progress" and response.event.progress.step >= 5 and not outage:
            mlflow_server.stop()
            mlflow_server.start()  # a fresh server takes seconds to start: the job trains on meanwhile
            outage = True
    assert kinds(second)[-1] == "completed", second[-1]
    assert second[0].accepted.resumed_from_step == 4
    notes = log_lines(second)
    assert any("MLflow did not take metrics" in n for n in notes), notes  # the outage was noticed, not fatal

    # 3. Evaluate (base vs the SFT adapter) and 4. Export, registering the merged model.
    adapter = second[-1].completed.artifacts["adapter"]
    evaluation = jobs_pb2.EvaluateRequest(
        job_id="evaluate",
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        variants=[jobs_pb2.EvalVariant(name="base"), jobs_pb2.EvalVariant(name="sft", adapter_uri=adapter)],
        dataset_uri=str(dataset),
        batch_size=4,
        max_samples=4,
        bootstrap_samples=10,
        generation=common_pb2.GenerationConfig(max_new_tokens=4),
        output_uri="runs/evaluate",
        tracking=tracking(mlflow_server.uri, "evaluate"),
    )
    evaluated = [r.event for r in stub.Evaluate(evaluation, timeout=600)]
    assert kinds(evaluated)[-1] == "completed", evaluated[-1]
    export = jobs_pb2.ExportRequest(
        job_id="export",
        model=common_pb2.ModelRef(model_id=str(tiny_model_path), adapter_uri=adapter),
        output_uri="runs/model",
        tracking=tracking(mlflow_server.uri, "export", registered_model_name=MODEL_NAME),
    )
    exported = [r.event for r in stub.Export(export, timeout=600)]
    assert kinds(exported)[-1] == "completed", exported[-1]
    assert exported[-1].completed.artifacts["registered_model"] == f"models:/{MODEL_NAME}/1"

    # Read back what was logged, through the MLflow client.
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # kill, retry and three stages: one run
    run = runs[0]
    assert run.data.tags[RUN_KEY_TAG] == RUN_KEY and run.info.run_name == "tracking-wf"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["sft.learning_rate"] == "0.003" and params["sft.max_steps"] == "8"
    assert params["sft.lora_r"] == "16" and params["sft.model_id"] == str(tiny_model_path)

    # The loss of every step, once, as the job reported it (the resumed attempt's for the steps it trained again).
    job_losses = losses(first) | losses(second)
    history = client.get_metric_history(run.info.run_id, "sft/loss")
    assert sorted(m.step for m in history) == list(range(1, 9)), [m.step for m in history]
    for point in history:
        assert point.value == pytest.approx(job_losses[point.step], rel=1e-3, abs=1e-4), point
    assert {m.step for m in client.get_metric_history(run.info.run_id, "sft/eval_loss")} == {4, 8}
    assert len(client.get_metric_history(run.info.run_id, "sft/learning_rate")) == 8

    evaluation_metrics = evaluated[-1].completed.metrics
    for name, value in evaluation_metrics.items():
        assert run.data.metrics[f"evaluate/{name}"] == pytest.approx(value), name

    def listed(path: str) -> set[str]:
        return {Path(a.path).name for a in client.list_artifacts(run.info.run_id, path)}

    assert {"adapter_model.safetensors", "adapter_config.json"} <= listed("sft/adapter")
    assert {"report.html", "metrics.json", "predictions.jsonl", "metrics_table.json"} <= listed("evaluate")
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluate/metrics_table.json")).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]  # MLflow's table layout
    assert {row["variant"] for row in rows} == {"base", "sft"}
    for row in rows:  # each figure of the table is the job's
        assert row["value"] == pytest.approx(evaluation_metrics[f"{row['variant']}/{row['metric']}"])
        assert row["verdict"] == "base" if row["variant"] == "base" else row["delta_vs_base"] is not None

    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == run.info.run_id and version.source == f"runs:/{run.info.run_id}/model"
    assert {"model.safetensors", "config.json"} <= listed("model")

    # An export that runs again (its job failed after registering, say) registers nothing twice.
    export.job_id = "export-again"
    again = [r.event for r in stub.Export(export, timeout=600)]
    assert again[-1].completed.artifacts["registered_model"] == f"models:/{MODEL_NAME}/1"
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 1


def test_an_unreachable_server_fails_the_job_at_its_start_naming_the_address(
    tracked_worker: WorkerProcess, tiny_model_path: Path, dataset: Path
) -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    request = train_request("down", tiny_model_path, dataset, "runs/down", max_steps=2)
    request.tracking.CopyFrom(tracking(address, "sft"))
    started = time.monotonic()
    events = [r.event for r in tracked_worker.stub().Train(request, timeout=300)]
    failed = events[-1].failed
    assert failed.reason == jobs_pb2.FAILURE_REASON_FAILED_PRECONDITION, events[-1]
    assert address in failed.message and "tracking.mlflow" in failed.message
    assert not any(e.WhichOneof("event") == "progress" and e.progress.phase == "training" for e in events)
    assert time.monotonic() - started < 120


def test_bad_tracking_sections_are_refused_before_the_job_naming_the_field(
    tracked_worker: WorkerProcess, tiny_model_path: Path, dataset: Path
) -> None:
    stub = tracked_worker.stub()
    request = train_request("bad-tracking", tiny_model_path, dataset, "runs/bad", max_steps=2)
    request.tracking.CopyFrom(tracking("file:///tmp/mlruns", "sft"))
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Train(request, timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tracking.mlflow.tracking_uri" in refused.value.details()

    if importlib.util.find_spec("wandb") is None:  # W&B is optional: asked for and missing is a clear refusal
        request.tracking.CopyFrom(jobs_pb2.TrackingConfig(run_key=RUN_KEY, wandb=jobs_pb2.WandbConfig(project="p")))
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.Train(request, timeout=60))
        assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "pip install wandb" in missing.value.details()
