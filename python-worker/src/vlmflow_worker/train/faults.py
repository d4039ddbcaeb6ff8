"""Fault injection for the durability tests (issue 7); inert unless one of these variables is set on the worker.

- VLMFLOW_FAULT_CHECKPOINT_ENOSPC=<step>: the checkpoint save at that step (or the first one after it) writes its
  staging folder, then fails with ENOSPC, as a full artifact store would; for machines where a test cannot mount
  a tiny tmpfs (not root). Training then fails typed STORAGE and earlier checkpoints stay as they were.
- VLMFLOW_FAULT_OOM_ABOVE_MICRO_BATCH=<n>: every training step with micro_batch_size > n raises torch's
  OutOfMemoryError, like an allocation limit; the job fails typed OUT_OF_MEMORY, and the pipeline's retry with half
  the micro-batch can succeed.

python-worker/tests/test_faults.py and test/faults*.test.ts use them; docs/durability.md lists the runs.
"""

from __future__ import annotations

import errno
import os

import torch
from transformers import TrainerCallback

CHECKPOINT_ENOSPC = "VLMFLOW_FAULT_CHECKPOINT_ENOSPC"
OOM_ABOVE_MICRO_BATCH = "VLMFLOW_FAULT_OOM_ABOVE_MICRO_BATCH"


def fail_checkpoint_write(step: int) -> None:
    """Raises ENOSPC when the checkpoint-write fault is armed for `step`."""
    at = os.environ.get(CHECKPOINT_ENOSPC)
    if at and step >= int(at):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {CHECKPOINT_ENOSPC}={at})")


def armed_oom() -> bool:
    return bool(os.environ.get(OOM_ABOVE_MICRO_BATCH))


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
