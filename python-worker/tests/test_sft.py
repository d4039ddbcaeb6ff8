"""SFT through the real worker: the tiny model learns a synthetic task; a SIGKILLed run resumes where its last
checkpoint left it and continues the same loss curve; cancel checkpoints and stops; bad requests are refused."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image

from vlmflow.v1 import common_pb2, jobs_pb2, worker_pb2
from vlmflow_worker.fixtures.synthetic import generate

from .conftest import WorkerProcess, start_worker

# One torch thread per job process: the machine is small and shared; more threads only contend.
os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def sft_worker(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("sft-data")
    proc = start_worker(tmp_path_factory.mktemp("sft-artifacts"), "--data-root", str(data))
    proc.data = data  # type: ignore[attr-defined]
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=60)


@pytest.fixture(scope="module")
def dataset(sft_worker: WorkerProcess, tiny_model_path: Path) -> Path:
    """200 shape-colour rows (chance: 1 in 4 colours), prepared through the worker; 40 held out."""
    return prepared_shapes(sft_worker, tiny_model_path, 200)


def prepared_shapes(worker: WorkerProcess, model: Path, rows: int) -> Path:
    """`rows` shape-colour rows in the worker's data root, prepared through the worker; a fifth held out."""
    generate("shape_colour", rows, 0, worker.data / "shapes")  # type: ignore[attr-defined]
    request = jobs_pb2.PrepareDatasetRequest(
        job_id="prep-shapes",
        sources=[jobs_pb2.DatasetSource(uri=str(worker.data / "shapes" / "data.jsonl"))],  # type: ignore[attr-defined]
        model=common_pb2.ModelRef(model_id=str(model)),
        eval_fraction=0.2,
        seed=1,
    )
    events = [r.event for r in worker.stub().PrepareDataset(request, timeout=300)]
    return Path(events[-1].completed.artifacts["dataset"])


def train_request(job_id: str, model: Path, dataset: Path, output: str, **training) -> jobs_pb2.TrainRequest:
    defaults = dict(
        learning_rate=3e-3,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        lr_scheduler="constant",
        logging_steps=1,
        save_steps=4,
        eval_steps=0,
        seed=7,
    )
    return jobs_pb2.TrainRequest(
        job_id=job_id,
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=common_pb2.ModelRef(model_id=str(model)),
        dataset_uri=str(dataset),
        output_uri=output,
        lora=jobs_pb2.LoraConfig(r=16, alpha=32, dropout=0.05),
        training=jobs_pb2.TrainingConfig(**(defaults | training)),
    )


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def losses(events) -> dict[int, float]:
    return {e.progress.step: e.progress.loss for e in events if e.WhichOneof("event") == "progress" and e.progress.loss}


def exact_match(model_path: Path, adapter: str, dataset: Path) -> float:
    """Greedy answers on the held-out split, loaded the way the worker loads models."""
    from vlmflow_worker.models import ModelSpec, load_model

    torch.set_num_threads(1)
    model, processor = load_model(ModelSpec(str(model_path), adapter=adapter), device="cpu")
    rows = [json.loads(line) for line in (dataset / "eval.jsonl").read_text().splitlines()]
    right = 0
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"][:-1], add_generation_prompt=True)
        images = [[Image.open(dataset / p).convert("RGB") for p in row["images"]]]
        inputs = processor(text=[prompt], images=images, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        right += answer.strip() == row["messages"][-1]["content"][0]["text"]
    return right / len(rows)


def test_sft_takes_held_out_accuracy_from_chance_to_well_above(
    sft_worker: WorkerProcess, tiny_model_path: Path, dataset: Path
) -> None:
    request = train_request(
        "learn", tiny_model_path, dataset, "runs/learn", max_steps=25, micro_batch_size=8, save_steps=25, eval_steps=25
    )
    events = [r.event for r in sft_worker.stub().Train(request, timeout=600)]
    assert kinds(events)[0] == "accepted" and kinds(events)[-1] == "completed", events[-1]
    completed = events[-1].completed
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress" and e.progress.loss]
    assert progress[-1].loss < progress[0].loss
    last = progress[-1]
    assert last.total_steps == 25 and last.samples_per_second > 0 and last.tokens_per_second > 0
    assert last.peak_memory_bytes > 0 and last.learning_rate > 0 and last.grad_norm > 0
    assert any(e.WhichOneof("event") == "eval" and "eval_loss" in e.eval.metrics for e in events)
    assert "checkpoint_saved" in kinds(events)
    adapter = Path(completed.artifacts["adapter"])
    assert (adapter / "adapter_model.safetensors").is_file()

    # Attaching again (a retried activity, a run continued as new) gets the job's state: every event but the
    # progress superseded by a later one; WatchJob still has the whole log.
    attached = [r.event for r in sft_worker.stub().Train(request, timeout=120)]
    assert attached[0].accepted.attached and attached[-1] == events[-1]
    last_progress = max(i for i, e in enumerate(events) if e.WhichOneof("event") == "progress")
    kept = [e for i, e in enumerate(events) if e.WhichOneof("event") != "progress" or i == last_progress]
    assert [e.sequence for e in attached] == [e.sequence for e in kept]
    assert kinds(attached).count("progress") == 1 < kinds(events).count("progress")
    watched = [r.event for r in sft_worker.stub().WatchJob(worker_pb2.WatchJobRequest(job_id="learn"), timeout=120)]
    assert [e.sequence for e in watched] == [e.sequence for e in events]

    base, tuned = exact_match(tiny_model_path, "", dataset), exact_match(tiny_model_path, str(adapter), dataset)
    assert base <= 0.3, base  # the random model does not even name a colour
    assert tuned >= 0.6, tuned  # 4 colours: chance is 0.25


def test_sigkilled_run_resumes_from_its_last_checkpoint_and_continues_the_same_curve(
    sft_worker: WorkerProcess, tiny_model_path: Path, dataset: Path
) -> None:
    stub = sft_worker.stub()
    reference = [r.event for r in stub.Train(train_request("ref", tiny_model_path, dataset, "runs/ref", max_steps=12))]
    assert kinds(reference)[-1] == "completed"

    request = train_request("crash", tiny_model_path, dataset, "runs/crash", max_steps=12)
    first = []
    for response in stub.Train(request, timeout=300):
        first.append(response.event)
        if response.event.WhichOneof("event") == "checkpoint_saved" and response.event.checkpoint_saved.step == 4:
            pid = int((sft_worker.artifact_root / "jobs" / "crash" / "child.pid").read_text())
            os.kill(pid, signal.SIGKILL)
    failed = first[-1].failed
    assert failed.reason == jobs_pb2.FAILURE_REASON_INTERNAL and "killed by signal 9" in failed.message
    assert failed.last_checkpoint_uri.endswith("checkpoint-") is False and "checkpoint-" in failed.last_checkpoint_uri
    resumed_at = int(failed.last_checkpoint_uri.rsplit("-", 1)[1])
    assert resumed_at >= 4

    second = [r.event for r in stub.Train(request, timeout=300)]
    assert kinds(second)[-1] == "completed", second[-1]
    assert not second[0].accepted.attached and second[0].accepted.resumed_from_step == resumed_at
    after = losses(second)
    assert min(after) == resumed_at + 1 and max(after) == 12  # nothing before the checkpoint is redone
    expected = losses(reference)
    for step, loss in after.items():
        assert loss == pytest.approx(expected[step], rel=1e-3, abs=1e-4), (step, loss, expected[step])
    job = stub.GetJob(worker_pb2.GetJobRequest(job_id="crash")).job
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.step == 12

    # TensorBoard, beside the checkpoints: one curve of the whole run, each step once, as the job reported it (the
    # resumed attempt's values for the steps it trained again).
    tensorboard = Path(second[-1].completed.artifacts["tensorboard"])
    assert tensorboard.parent == Path(second[-1].completed.artifacts["checkpoints"]).parent
    curve = tensorboard_scalars(tensorboard, "train/loss")
    reported = losses(first) | after
    assert [step for step, _ in curve] == list(range(1, 13))
    for step, value in curve:
        assert value == pytest.approx(reported[step], rel=1e-6), (step, value, reported[step])
    assert len(tensorboard_scalars(tensorboard, "train/learning_rate")) == 12
    assert len(tensorboard_scalars(tensorboard, "train/grad_norm")) == 12


def tensorboard_scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point of `tag` in the event files under `logdir`, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_cancel_saves_a_checkpoint_and_the_stream_ends_cancelled(
    sft_worker: WorkerProcess, tiny_model_path: Path, dataset: Path
) -> None:
    stub = sft_worker.stub()
    request = train_request("cancel-me", tiny_model_path, dataset, "runs/cancel", max_steps=500, save_steps=1000)
    stream = stub.Train(request, timeout=300)
    events = []
    for response in stream:
        events.append(response.event)
        if response.event.WhichOneof("event") == "progress" and response.event.progress.step >= 2:
            break
    pid = int((sft_worker.artifact_root / "jobs" / "cancel-me" / "child.pid").read_text())
    assert stub.Health(worker_pb2.HealthRequest()).jobs_running == 1
    again = stub.Train(request, timeout=60)  # a retried activity: attaches, starts nothing
    first = next(again).event
    again.cancel()  # detaching does not stop the job
    assert first.accepted.attached and first.sequence == 1
    assert int((sft_worker.artifact_root / "jobs" / "cancel-me" / "child.pid").read_text()) == pid
    assert stub.GetJob(worker_pb2.GetJobRequest(job_id="cancel-me")).job.state == jobs_pb2.JOB_STATE_RUNNING
    busy = train_request("second", tiny_model_path, dataset, "runs/second", max_steps=2)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Train(busy, timeout=60))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "cancel-me" in err.value.details()

    started = time.monotonic()
    job = stub.CancelJob(worker_pb2.CancelJobRequest(job_id="cancel-me", wait=True, reason="test"), timeout=60).job
    assert time.monotonic() - started < 15
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert job.failed.reason == jobs_pb2.FAILURE_REASON_CANCELLED and "checkpoint-" in job.last_checkpoint_uri
    assert Path(job.last_checkpoint_uri, "optimizer.pt").is_file()
    events += [r.event for r in stream]
    assert kinds(events)[-1] == "failed" and events[-1].failed.reason == jobs_pb2.FAILURE_REASON_CANCELLED
    assert "checkpoint_saved" in kinds(events)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert stub.Health(worker_pb2.HealthRequest()).jobs_running == 0
    listed = stub.ListJobs(worker_pb2.ListJobsRequest(state=jobs_pb2.JOB_STATE_CANCELLED)).jobs
    assert [j.job_id for j in listed] == ["cancel-me"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.ClearField("dataset_uri"), "dataset_uri"),
        (lambda r: setattr(r, "output_uri", "../../etc"), "output_uri"),
        (lambda r: setattr(r.training, "lr_scheduler", "sometimes"), "training.lr_scheduler"),
        (lambda r: setattr(r.lora, "dropout", 1.5), "lora.dropout"),
        (lambda r: setattr(r, "kind", jobs_pb2.TRAIN_KIND_UNSPECIFIED), "kind"),
    ],
)
def test_bad_train_requests_name_the_field_before_starting(
    sft_worker: WorkerProcess, tiny_model_path: Path, dataset: Path, change, field: str
) -> None:
    request = train_request("bad", tiny_model_path, dataset, "runs/bad", max_steps=2)
    change(request)
    with pytest.raises(grpc.RpcError) as err:
        list(sft_worker.stub().Train(request, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_on_cpu_is_a_clear_failed_precondition(
    sft_worker: WorkerProcess, tiny_model_path: Path, dataset: Path
) -> None:
    request = train_request("qlora", tiny_model_path, dataset, "runs/qlora", max_steps=2)
    request.model.quantization = common_pb2.QUANTIZATION_NF4
    with pytest.raises(grpc.RpcError) as err:
        list(sft_worker.stub().Train(request, timeout=60))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "CUDA" in err.value.details()


def test_two_cpu_processes_train_one_job_under_torchrun(
    sft_worker: WorkerProcess, tiny_model_path: Path, dataset: Path
) -> None:
    request = train_request("ddp", tiny_model_path, dataset, "runs/ddp", max_steps=4, num_processes=2)
    events = [r.event for r in sft_worker.stub().Train(request, timeout=300)]
    assert kinds(events)[-1] == "completed", events[-1]
    assert kinds(events).count("accepted") == 1 and kinds(events).count("completed") == 1
    log = [json.loads(line) for line in Path(events[-1].completed.artifacts["training_log"]).read_text().splitlines()]
    assert {entry["step"] for entry in log if "loss" in entry} == {1, 2, 3, 4}  # rank 0 alone writes
    assert events[-1].completed.metrics["global_step"] == 4
    checkpoint = Path(sft_worker.artifact_root, "runs/ddp/checkpoints/checkpoint-4")
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
