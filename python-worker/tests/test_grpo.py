"""GRPO: config mapping, SIGKILL + resume continuing the reward curve, cancel, and Train(kind GRPO) over gRPC.

The runs start from a briefly trained SFT adapter (8 steps on shape_colour: it names colours, often the wrong one).
The tiny model's logits are small (a random 128-wide head), so sampling runs at a low temperature: at 1.0 its
samples are mostly noise, at 0.15 mostly colour words.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.resume_checks import (
    assert_resumed_from,
    assert_same_adapter,
    assert_same_curve,
    kill_after_checkpoint,
    step_values,
    train_process,
)
from tests.test_dpo import single_tile_model  # noqa: F401  (a fixture)
from tests.test_evaluate import prepared_dataset
from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker import faults
from vlmflow_worker.errors import Cancelled, InvalidArgument
from vlmflow_worker.jobs import eventlog
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train import grpo
from vlmflow_worker.train.config import SFTConfig
from vlmflow_worker.train.sft import train_sft


def sft_dataset(root: Path, rows: int, held_out: int) -> Path:
    """shape_colour conversation rows split train / eval."""
    folder = prepared_dataset(root, "shape_colour", rows)
    lines = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    train, held = lines[: rows - held_out], lines[rows - held_out :]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    meta = {"kind": "sft", "fingerprint": "s" * 64, "train": "train.jsonl", "eval": "eval.jsonl"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


LR = 2e-4  # GRPO's on the tiny model at a low temperature (whose 1/T scales the gradient); 3e-3 collapses the policy


def grpo_request(model: Path, dataset: Path, output: Path, **training) -> jobs_pb2.TrainRequest:
    defaults = dict(
        learning_rate=1e-3,
        max_steps=40,
        micro_batch_size=16,
        gradient_accumulation_steps=1,
        lr_scheduler="constant",
        save_steps=20,
        logging_steps=2,
        eval_steps=0,
        seed=1,
        gradient_checkpointing=False,
    )
    return jobs_pb2.TrainRequest(
        job_id="grpo",
        kind=jobs_pb2.TRAIN_KIND_GRPO,
        model=common_pb2.ModelRef(model_id=str(model)),
        dataset_uri=str(dataset),
        output_uri=str(output),
        lora=jobs_pb2.LoraConfig(r=16, alpha=32, dropout=0.0),
        training=jobs_pb2.TrainingConfig(**{**defaults, **training}),
        grpo=jobs_pb2.GrpoConfig(
            num_generations=8,
            max_completion_length=4,
            temperature=1.0,
            beta=0.0,
            loss_type="dapo",
            rewards=[jobs_pb2.RewardConfig(kind="exact_match"), jobs_pb2.RewardConfig(kind="anls", weight=0)],
        ),
    )


def test_config_from_request():
    request = grpo_request(Path("m"), Path("d"), Path("o"))
    request.grpo.beta = 0.04
    request.grpo.epsilon_high = 0.28
    request.grpo.importance_sampling_level = "sequence"
    request.grpo.rewards.add(kind="numeric", relative_tolerance=0.05, tag="answer", name="close")
    config = grpo.GRPOTrainConfig.from_request(request, "d", "o", adapter_dir="a")
    assert (config.num_generations, config.max_completion_length, config.beta) == (8, 4, 0.04)
    assert (config.epsilon, config.epsilon_high, config.importance_sampling_level) == (0.2, 0.28, "sequence")
    assert [(r.kind, r.weight, r.label) for r in config.rewards] == [
        ("exact_match", 1.0, "exact_match"),
        ("anls", 0.0, "anls"),  # a weight of 0 is a value
        ("numeric", 1.0, "close"),
    ]
    assert config.rewards[2].relative_tolerance == 0.05 and config.adapter_dir == "a"
    request.training.ClearField("learning_rate")
    assert grpo.GRPOTrainConfig.from_request(request, "d", "o").learning_rate == 1e-5  # GRPO's default
    request.training.micro_batch_size = 6
    with pytest.raises(InvalidArgument, match=r"\(6 completions a step\) must be a multiple of grpo.num_generations"):
        grpo.GRPOTrainConfig.from_request(request, "d", "o")
    request.training.micro_batch_size = 8
    request.grpo.loss_type = "ppo"
    with pytest.raises(InvalidArgument, match="grpo.loss_type must be one of grpo, dapo"):
        grpo.GRPOTrainConfig.from_request(request, "d", "o")
    request.grpo.loss_type = "grpo"
    request.grpo.rewards.add(kind="format")
    with pytest.raises(InvalidArgument, match=r"grpo.rewards\[3\].tag is empty"):
        grpo.GRPOTrainConfig.from_request(request, "d", "o")


def brief_sft(model: Path, dataset: Path, out: Path, learning_rate: float = 3e-3, seed: int = 1) -> Path:
    """The starting point: an SFT adapter that answers with colour words, often the wrong one."""
    config = SFTConfig(
        model_id=str(model), dataset_dir=str(dataset), output_dir=str(out), lora_r=16, lora_alpha=32,
        lora_dropout=0.0, learning_rate=learning_rate, max_steps=8, micro_batch_size=8, gradient_accumulation_steps=1,
        lr_scheduler="constant", warmup_ratio=0.0, save_steps=1000, eval_steps=0, logging_steps=4, seed=seed,
        gradient_checkpointing=False,
    )  # fmt: skip
    return Path(train_sft(config).artifacts["adapter"])


def test_cancel_saves_a_checkpoint_and_the_next_run_resumes(single_tile_model, tmp_path):  # noqa: F811
    dataset = sft_dataset(tmp_path / "data", rows=12, held_out=2)
    settings = WorkerSettings(port=0, artifact_root=tmp_path)
    request = grpo_request(
        single_tile_model, dataset, tmp_path / "run", max_steps=3, save_steps=100, micro_batch_size=4
    )
    request.grpo.num_generations = 2
    job = tmp_path / "job"
    job.mkdir()
    (job / eventlog.CANCEL).touch()
    with pytest.raises(Cancelled, match="cancelled at step 1"):
        grpo.run(request, JobContext("grpo", job, settings))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-1").is_dir()
    assert grpo.resume_point(request, settings)[0] == 1
    (job / eventlog.CANCEL).unlink()
    result = grpo.run(request, JobContext("grpo", job, settings))
    assert result.metrics["global_step"] == 3.0
    logs = [e.log.message for e in eventlog.read_events(job / eventlog.EVENTS) if e.HasField("log")]
    assert any("resuming from" in m and "checkpoint-1" in m for m in logs)


def test_grpo_killed_mid_training_resumes_the_reward_curve(single_tile_model, tmp_path):  # noqa: F811
    """SIGKILL a GRPO run that continues an SFT adapter (beta > 0: TRL keeps a frozen copy of it as the reference)
    after checkpoint-4, resume it: every step's loss and reward, and the final adapter, equal an uninterrupted run's
    of the same seed."""
    dataset = sft_dataset(tmp_path / "data", rows=40, held_out=4)
    sft = brief_sft(single_tile_model, dataset, tmp_path / "sft")

    def request(output: str) -> jobs_pb2.TrainRequest:
        r = grpo_request(
            single_tile_model, dataset, tmp_path / output, learning_rate=LR, max_steps=8, save_steps=2,
            logging_steps=1, micro_batch_size=8,
        )  # fmt: skip
        r.grpo.num_generations = 4
        r.grpo.temperature = 0.15
        r.grpo.max_completion_length = 3
        r.grpo.beta = 0.04
        r.model.adapter_uri = str(sft)
        return r

    assert train_process("grpo", request("whole"), tmp_path, "whole").wait(timeout=600) == 0
    killed = train_process("grpo", request("killed"), tmp_path, "killed", {faults.HANG_AT_STEP: "5"})
    kill_after_checkpoint(killed, tmp_path / "killed" / "checkpoints" / "checkpoint-4")
    assert not (tmp_path / "killed" / "adapter").exists()
    assert train_process("grpo", request("killed"), tmp_path, "killed").wait(timeout=600) == 0

    assert_resumed_from(tmp_path / "killed-job", "checkpoint-4")
    curve = step_values(tmp_path / "killed", "loss", "reward")
    assert_same_curve(step_values(tmp_path / "whole", "loss", "reward"), curve, steps=8)
    assert_same_adapter(tmp_path / "whole" / "adapter", tmp_path / "killed" / "adapter", moved_from=sft)


def test_train_grpo_through_the_worker(worker, tiny_model_path, tmp_path_factory):
    root = worker.artifact_root
    dataset = sft_dataset(root / "datasets" / "grpo", rows=8, held_out=2)
    request = grpo_request(tiny_model_path, dataset, root / "runs" / "grpo-grpc", max_steps=2, micro_batch_size=4)
    request.job_id = "grpc-grpo"
    request.grpo.num_generations = 2
    request.lora.use_dora = True
    events = [r.event for r in worker.stub().Train(request, timeout=300)]
    assert events[-1].WhichOneof("event") == "completed", events[-1]
    assert events[0].accepted.kind == jobs_pb2.JOB_KIND_TRAIN_GRPO
    adapter = Path(events[-1].completed.artifacts["adapter"])
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True

    # Refused before anything starts: preference rows, and a custom reward this worker does not allow.
    pref = prepared_dataset(root / "datasets" / "grpo-pref", "shape_colour", 4, preference=True)
    bad = grpo_request(tiny_model_path, pref, root / "runs" / "grpo-bad")
    bad.job_id = "grpc-grpo-bad"
    with pytest.raises(grpc.RpcError) as info:
        list(worker.stub().Train(bad, timeout=30))
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GRPO needs conversation rows" in info.value.details()
    )
    custom = grpo_request(tiny_model_path, dataset, root / "runs" / "grpo-custom")
    custom.job_id = "grpc-grpo-custom"
    custom.grpo.rewards.add(kind="custom", file=str(root / "r.py"), function="f")
    with pytest.raises(grpc.RpcError) as info:
        list(worker.stub().Train(custom, timeout=30))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "VLMFLOW_ALLOW_USER_REWARDS" in info.value.details()
