"""The child process of one job: reads the request from the job folder, runs the kind's entry, records the end.

python -m vlmflow_worker.jobs.child <job_dir>

The registry starts it that way only without a fork server (forkserver.py), whose forked processes run `run` too.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from vlmflow.v1 import jobs_pb2
from vlmflow_worker import tracking
from vlmflow_worker.errors import WorkerError
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.jobs.kinds import spec_for
from vlmflow_worker.log import setup_logging
from vlmflow_worker.serve.settings import WorkerSettings

# Set for the processes torchrun starts from inside a job: they run the entry but do not announce the job.
INNER_ENV = "VLMFLOW_JOB_INNER"


def load(folder: Path):
    meta = json.loads((folder / "job.json").read_text())
    settings = WorkerSettings(  # the child serves nothing: only the roots matter
        host="127.0.0.1",
        port=0,
        artifact_root=Path(meta["settings"]["artifact_root"]),
        data_roots=[Path(p) for p in meta["settings"]["data_roots"]],
        job_capacity=1,
        allow_user_rewards=meta["settings"].get("allow_user_rewards", False),
    )
    spec = spec_for(meta["kind"])
    request = spec.request_type.FromString((folder / "request.binpb").read_bytes())
    return meta, settings, spec, request


def run(folder: Path) -> int:
    meta, settings, spec, request = load(folder)
    ctx = JobContext(meta["job_id"], folder, settings)
    run_error: BaseException | None = None
    try:
        if not os.environ.get(INNER_ENV):
            step, uri = spec.resume_point(request, settings) if spec.resume_point else (0, "")
            ctx.emit(
                accepted=jobs_pb2.JobAccepted(
                    kind=meta["kind"], resumed_from_step=step, resumed_from_checkpoint_uri=uri
                )
            )
            # Before any model is loaded: an MLflow server that does not answer fails the job now, not after hours.
            ctx.mlflow = tracking.open_for(request, ctx)
        result = spec.run(request, ctx)
        if result is not None:  # None: an inner process that left the end to its launcher
            ctx.emit(
                completed=jobs_pb2.JobCompleted(
                    artifacts=result.artifacts,
                    metrics=result.metrics,
                    cached=result.cached,
                    fingerprint=result.fingerprint,
                )
            )
    except WorkerError as err:
        run_error = err
        ctx.emit(failed=failure(err.reason, err.message, err.detail, ctx.last_checkpoint_uri))
        return 1
    except Exception as err:  # a bug or an unexpected library error: typed INTERNAL, with the traceback
        run_error = err
        message = f"the job failed unexpectedly: {type(err).__name__}: {err}"
        ctx.emit(
            failed=failure(
                jobs_pb2.FAILURE_REASON_INTERNAL, message, traceback.format_exc()[-4000:], ctx.last_checkpoint_uri
            )
        )
        return 1
    finally:
        tracking.ended(ctx.mlflow, run_error)
    return 0


def failure(reason: int, message: str, detail: str = "", checkpoint: str = "") -> jobs_pb2.JobFailed:
    return jobs_pb2.JobFailed(reason=reason, message=message, detail=detail, last_checkpoint_uri=checkpoint)


def die_with_parent() -> None:
    """The job dies with the worker that started it (Linux), so no orphan keeps holding a GPU."""
    parent = os.environ.pop("VLMFLOW_PARENT_PID", "")
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def use_job_gpus(folder: Path) -> None:
    """Gives a forked job process its job's GPUs. Its fork server was started seeing none (CUDA_VISIBLE_DEVICES empty,
    registry.py), and CUDA reads the variable once, when first initialised: if an import initialised it, CUDA still
    sees no GPU, and the process starts over as a fresh job process (same pid, so the worker's supervision goes on)."""
    visible = json.loads((folder / "job.json").read_text()).get("cuda_visible_devices")
    if not visible:
        return  # a CPU worker: nothing to give
    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    import torch

    if torch.cuda._is_in_bad_fork() or not torch.cuda.is_available():  # bad fork: the fork server initialised CUDA
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "vlmflow_worker.jobs.child", str(folder)])


def limit_threads() -> None:
    """CPU threads per job process (VLMFLOW_TORCH_THREADS; 1 avoids oversubscription on a small or shared machine).
    Through OMP_NUM_THREADS, which torch reads when it loads: so this runs before anything imports torch."""
    if os.environ.get("VLMFLOW_TORCH_THREADS"):
        os.environ["OMP_NUM_THREADS"] = os.environ["VLMFLOW_TORCH_THREADS"]


def main() -> None:
    limit_threads()
    die_with_parent()
    setup_logging(os.environ.get("VLMFLOW_LOG_LEVEL", "INFO"))
    exit_now(run(Path(sys.argv[1])))


def exit_now(code: int) -> None:
    """The end is on disk (fsync'd): skip the interpreter's teardown (unloading torch takes seconds) so the worker
    sees the exit, ends the stream and frees the slot at once."""
    logging.shutdown()
    with contextlib.suppress(Exception):  # a closed or broken stream must not keep the process alive
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
