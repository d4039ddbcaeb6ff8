"""Worker-level faults during real SFT of the tiny model, through a real worker process (issue 7).

- The artifact store fills up, or turns read-only, between two checkpoints: a real tmpfs (mounted by the test; it
  runs as root, where chmod would not stop a write), filled or remounted read-only once checkpoint-3 exists. The
  next checkpoint fails typed STORAGE naming the cause; checkpoint-3 stays complete and loadable: once space is
  back, the same job id resumes from it and completes. Where no tmpfs can be mounted, the checkpoint writer's
  hook (VLMFLOW_FAULT_CHECKPOINT_ENOSPC) injects the same ENOSPC instead
  (VLMFLOW_TEST_NO_TMPFS=1 takes that path here too).
- Out of memory: VLMFLOW_FAULT_OOM_ABOVE_MICRO_BATCH=2 makes every step with a bigger micro-batch raise torch's
  OutOfMemoryError; the job fails typed OUT_OF_MEMORY with what to change, and the retry the pipeline makes (half
  the micro-batch, twice the accumulation, same job id) completes.

python-worker/.venv/bin/pytest python-worker/tests/test_faults.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vlmflow.v1 import common_pb2, jobs_pb2, worker_pb2
from vlmflow_worker import faults
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.train.checkpoints import complete_checkpoints

from .conftest import WorkerProcess, start_worker

MAX_STEPS = 6
SAVE_STEPS = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault-data")
    generate("shape_colour", 24, 0, folder / "shapes")
    return folder


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root under which each test mounts its own store."""
    return tmp_path_factory.mktemp("stores")


@pytest.fixture(scope="module")
def plain_worker(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, stores: Path) -> Iterator[WorkerProcess]:
    worker = _serve(tmp_path_factory.mktemp("artifacts"), data_dir, stores)
    yield worker
    _stop(worker)


@pytest.fixture(scope="module")
def dataset(plain_worker: WorkerProcess, data_dir: Path) -> str:
    """The shapes prepared once, into the data root every worker of this module reads."""
    request = jobs_pb2.PrepareDatasetRequest(
        job_id="prep-shapes",
        sources=[jobs_pb2.DatasetSource(uri=str(data_dir / "shapes" / "data.jsonl"))],
        eval_fraction=0.2,
        output_uri=str(data_dir / "prepared"),
    )
    events = [r.event for r in plain_worker.stub().PrepareDataset(request, timeout=180)]
    assert events[-1].WhichOneof("event") == "completed", events[-1]
    return events[-1].completed.artifacts["dataset"]


def _serve(artifacts: Path, data_dir: Path, store: Path, env: dict[str, str] | None = None) -> WorkerProcess:
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        return start_worker(artifacts, "--data-root", str(data_dir), "--data-root", str(store))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _stop(worker: WorkerProcess) -> None:
    worker.process.terminate()
    worker.process.wait(timeout=60)


def _train_request(job_id: str, model: Path, dataset: str, output: str, micro_batch: int = 4, accumulation: int = 1):
    return jobs_pb2.TrainRequest(
        job_id=job_id,
        kind=jobs_pb2.TRAIN_KIND_SFT,
        model=common_pb2.ModelRef(model_id=str(model), dtype=common_pb2.DTYPE_FLOAT32),
        dataset_uri=dataset,
        output_uri=output,
        lora=jobs_pb2.LoraConfig(r=8, alpha=16),
        training=jobs_pb2.TrainingConfig(
            learning_rate=1e-3,
            max_steps=MAX_STEPS,
            micro_batch_size=micro_batch,
            gradient_accumulation_steps=accumulation,
            lr_scheduler="constant",
            save_steps=SAVE_STEPS,
            logging_steps=1,
            max_length=256,
        ),
    )


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.environ.get("VLMFLOW_TEST_NO_TMPFS"):  # take the hook path, as a machine without mount rights would
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def store(stores: Path) -> Iterator[tuple[Path, bool]]:
    """(folder for checkpoints, is it a tmpfs this test mounted)."""
    folder = stores / uuid.uuid4().hex[:8]
    mounted = _can_mount_tmpfs(folder)
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Writes zeros until the filesystem is full; returns the filler file."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("fault", ["store full", "store read-only"])
def test_a_failed_checkpoint_write_is_storage_and_keeps_the_previous_checkpoint(
    tmp_path: Path,
    data_dir: Path,
    stores: Path,
    plain_worker: WorkerProcess,
    dataset: str,
    tiny_model_path: Path,
    store: tuple[Path, bool],
    fault: str,
) -> None:
    folder, mounted = store
    # Without a tmpfs, a worker whose checkpoint writer raises ENOSPC at the second checkpoint (never read-only).
    hooked = None if mounted else _serve(tmp_path / "artifacts", data_dir, stores, {faults.CHECKPOINT_ENOSPC: "6"})
    worker = hooked or plain_worker
    try:
        output = str(folder / "run")
        request = _train_request(f"sft-store-{folder.name}", tiny_model_path, dataset, output)
        events = []
        for response in worker.stub().Train(request, timeout=600):
            events.append(response.event)
            saved = response.event.checkpoint_saved
            if mounted and saved.step == SAVE_STEPS:  # break the store between the two checkpoints
                if fault == "store full":
                    _fill(folder)
                else:
                    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        failed = events[-1].failed
        assert events[-1].WhichOneof("event") == "failed", events[-1]
        assert failed.reason == jobs_pb2.FAILURE_REASON_STORAGE, failed
        cause = "Read-only file system" if mounted and fault == "store read-only" else "No space left on device"
        # Full: the checkpoint-6 write fails; read-only: the training log's next line (step 4) already does.
        what = "training_log.jsonl" if mounted and fault == "store read-only" else f"checkpoint-{2 * SAVE_STEPS}"
        assert what in failed.message, failed.message
        assert cause in failed.message, failed.message
        assert f"checkpoint-{SAVE_STEPS}, is intact" in failed.message, failed.message
        assert failed.last_checkpoint_uri.endswith(f"checkpoint-{SAVE_STEPS}")

        # The previous checkpoint is complete and loadable; nothing half-written looks like a checkpoint.
        checkpoints = Path(output) / "checkpoints"
        assert [p.name for p in complete_checkpoints(checkpoints)] == [f"checkpoint-{SAVE_STEPS}"]
        previous = checkpoints / f"checkpoint-{SAVE_STEPS}"
        assert load_file(previous / "adapter_model.safetensors")  # the LoRA weights read back
        assert json.loads((previous / "trainer_state.json").read_text())["global_step"] == SAVE_STEPS
        assert not (Path(output) / "adapter").exists()
        assert worker.stub().Health(worker_pb2.HealthRequest(), timeout=10).jobs_running == 0

        # Space is back: the same job id resumes from that checkpoint and completes.
        if mounted:
            if fault == "store full":
                (folder / "filler").unlink()
            else:
                subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        else:
            _stop(worker)
            worker = plain_worker
        resumed = [r.event for r in worker.stub().Train(request, timeout=600)]
        assert resumed[0].accepted.resumed_from_step == SAVE_STEPS
        assert resumed[-1].WhichOneof("event") == "completed", resumed[-1]
        assert resumed[-1].completed.metrics["global_step"] == MAX_STEPS
        steps = [e.progress.step for e in resumed if e.WhichOneof("event") == "progress" and e.progress.loss]
        assert min(steps) == SAVE_STEPS + 1  # only the steps after the kept checkpoint were redone
        assert (Path(output) / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        if hooked:
            _stop(hooked)


def test_out_of_memory_is_typed_and_half_the_micro_batch_completes(
    tmp_path: Path, data_dir: Path, stores: Path, dataset: str, tiny_model_path: Path
) -> None:
    store = stores / "oom"
    worker = _serve(tmp_path / "artifacts", data_dir, stores, {faults.OOM_ABOVE_MICRO_BATCH: "2"})
    try:
        first = [
            r.event
            for r in worker.stub().Train(
                _train_request("sft-oom", tiny_model_path, dataset, str(store / "sft")), timeout=600
            )
        ]
        failed = first[-1].failed
        assert failed.reason == jobs_pb2.FAILURE_REASON_OUT_OF_MEMORY, failed
        assert "out of memory at step 0" in failed.message and "micro_batch_size 4" in failed.message
        assert "Lower training.micro_batch_size" in failed.message
        assert worker.stub().Health(worker_pb2.HealthRequest(), timeout=10).jobs_running == 0

        # What fineTunePipeline does next: same job id, half the micro-batch, twice the accumulation, a new folder.
        retry = _train_request(
            "sft-oom", tiny_model_path, dataset, str(store / "sft-mb2"), micro_batch=2, accumulation=2
        )
        second = [r.event for r in worker.stub().Train(retry, timeout=600)]
        assert second[-1].WhichOneof("event") == "completed", second[-1]
        assert second[-1].completed.metrics["global_step"] == MAX_STEPS
        assert not (store / "sft" / "adapter").exists()
    finally:
        _stop(worker)
