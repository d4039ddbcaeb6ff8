"""Fault injection for the durability tests (issue 7); inert unless one of these variables is set on the worker.

- VLMFLOW_FAULT_CHECKPOINT_ENOSPC=<step>: the checkpoint save at that step (or the first one after it) writes its
  staging folder, then fails with ENOSPC, as a full artifact store would; for machines where a test cannot mount
  a tiny tmpfs (not root). Training then fails typed STORAGE and earlier checkpoints stay as they were.
- VLMFLOW_FAULT_OOM_ABOVE_MICRO_BATCH=<n>: every training step with micro_batch_size > n raises torch's
  OutOfMemoryError, like an allocation limit; the job fails typed OUT_OF_MEMORY, and the pipeline's retry with half
  the micro-batch can succeed.
- VLMFLOW_FAULT_STEP_SECONDS=<s>: every training step takes s seconds longer, as on a slower device, so an
  end-to-end test can land its faults mid-stage however fast this machine trains the tiny model.
- VLMFLOW_FAULT_GENERATE_SECONDS=<s>: every Generate call takes s seconds longer (on the model thread, as a slower
  device would), so a batch inference run is still mid-way when a test kills its worker.
- VLMFLOW_FAULT_HANG_AT_STEP=<n>: the first training process of an output folder hangs at the end of step n (sends
  no event and ignores cancel, like a deadlock), so the worker's stuck check must notice, kill it and let the retry
  resume from the newest checkpoint.
- VLMFLOW_FAULT_PROGRESS_REPEAT=<k>: every progress event a job reports is written k times, so a test can push
  tens of thousands of progress updates through the stack in seconds (a compressed multi-day run).

python-worker/tests/test_faults.py and test/faults*.test.ts use them; docs/durability.md lists the runs.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

CHECKPOINT_ENOSPC = "VLMFLOW_FAULT_CHECKPOINT_ENOSPC"
OOM_ABOVE_MICRO_BATCH = "VLMFLOW_FAULT_OOM_ABOVE_MICRO_BATCH"
STEP_SECONDS = "VLMFLOW_FAULT_STEP_SECONDS"
GENERATE_SECONDS = "VLMFLOW_FAULT_GENERATE_SECONDS"
HANG_AT_STEP = "VLMFLOW_FAULT_HANG_AT_STEP"
PROGRESS_REPEAT = "VLMFLOW_FAULT_PROGRESS_REPEAT"


def fail_checkpoint_write(step: int) -> None:
    """Raises ENOSPC when the checkpoint-write fault is armed for `step`."""
    at = os.environ.get(CHECKPOINT_ENOSPC)
    if at and step >= int(at):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {CHECKPOINT_ENOSPC}={at})")


def slow_generate() -> None:
    """Sleeps VLMFLOW_FAULT_GENERATE_SECONDS when that fault is armed."""
    seconds = os.environ.get(GENERATE_SECONDS)
    if seconds:
        time.sleep(float(seconds))


def progress_repeat() -> int:
    """How many times each progress event is written (1 unless VLMFLOW_FAULT_PROGRESS_REPEAT is set)."""
    return max(1, int(os.environ.get(PROGRESS_REPEAT) or 1))


def armed_callbacks(micro_batch_size: int) -> list[TrainerCallback]:
    """The trainer callbacks of the armed faults; none unless their variables are set."""
    armed: list[TrainerCallback] = []
    if os.environ.get(OOM_ABOVE_MICRO_BATCH):
        armed.append(InjectedOutOfMemory(micro_batch_size))
    if os.environ.get(STEP_SECONDS):
        armed.append(SlowSteps(float(os.environ[STEP_SECONDS])))
    if os.environ.get(HANG_AT_STEP):
        armed.append(HangOnce(int(os.environ[HANG_AT_STEP])))
    return armed


class HangOnce(TrainerCallback):
    """Hangs forever at the end of step `step`, once per output folder (a marker file there remembers)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        marker = Path(args.output_dir) / "fault-hung-once"
        if state.global_step == self.step and not marker.exists():
            marker.touch()
            while True:  # no event, no cancel check: only a kill ends this
                time.sleep(3600)


class SlowSteps(TrainerCallback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


class InjectedOutOfMemory(TrainerCallback):
    """Raises torch.OutOfMemoryError at the start of each step while micro_batch_size is over the limit."""

    def __init__(self, micro_batch_size: int) -> None:
        self.micro_batch_size = micro_batch_size
        self.limit = int(os.environ.get(OOM_ABOVE_MICRO_BATCH, "0"))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.micro_batch_size > self.limit:
            raise torch.OutOfMemoryError(
                f"injected by {OOM_ABOVE_MICRO_BATCH}={self.limit}: micro_batch_size {self.micro_batch_size} "
                "does not fit"
            )
