"""Checkpoints: written atomically (a temporary folder, then a rename), found newest-first by step number.

A folder named `checkpoint-<step>` exists only once complete, so "the newest complete checkpoint" is simply the
highest step among those folders (numerically: checkpoint-10 is newer than checkpoint-9).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from transformers import Trainer

from vlmflow_worker import faults
from vlmflow_worker.errors import StorageError
from vlmflow_worker.jobs.context import JobContext

PATTERN = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = ".tmp-checkpoint-"


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def newest_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def step_of(checkpoint: Path) -> int:
    match = PATTERN.match(checkpoint.name)
    return int(match.group(1)) if match else 0


def clean_staging(folder: Path) -> None:
    """Removes half-written checkpoints left by a killed run."""
    if folder.is_dir():
        for stale in folder.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


class AtomicCheckpointTrainer(Trainer):
    """transformers' Trainer whose checkpoints appear by rename, announced as job events.

    Trainer writes `<run_dir>/checkpoint-N`; here `run_dir` is a staging folder during the save, and the finished
    folder is renamed into the real output folder. Rotation (save_total_limit) runs after the rename.
    """

    job: JobContext | None = None
    _staging: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Also the policy adapter. PEFT saves the "default" adapter at the checkpoint's root and any other adapter
        in a subfolder (TRL's frozen "ref" copy, when DPO continues an SFT adapter); transformers, seeing such a
        subfolder, loads only the subfolders, so the policy would restart from its SFT weights while the optimizer
        and step count continue. Loading the root adapter into the active one resumes the policy as it was."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        root = Path(resume_from_checkpoint)
        subfolders = [p for p in root.iterdir() if (p / "adapter_model.safetensors").is_file()]
        if subfolders and (root / "adapter_model.safetensors").is_file() and hasattr(model, "load_adapter"):
            from vlmflow_worker.models import attach_adapter  # the one safetensors-only adapter load

            active = model.active_adapters[0]
            attach_adapter(model, root, name=active, trainable=True, what=f"checkpoint {root.name}")
            model.set_adapter(active)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self.args.output_dir)
        step = self.state.global_step
        staging = run_dir / f"{STAGING_PREFIX}{step}"
        final = run_dir / f"checkpoint-{step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self._staging = str(staging)
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the rename instead
        try:
            super()._save_checkpoint(model, trial)
            faults.fail_checkpoint_write(step)  # test hook (issue 7), inert unless its variable is set
        except (OSError, RuntimeError) as err:
            mapped = _storage_error(err, run_dir, step, staging)
            if mapped is err:  # not a write failure: as it was
                raise
            raise mapped from err
        finally:
            self._staging = None
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank wrote its RNG state into staging
        if self.args.should_save:
            if final.exists():  # saved twice at the same step (cancel at a save step): keep the first
                shutil.rmtree(staging, ignore_errors=True)
            else:
                try:
                    _fsync_tree(staging / final.name)
                    os.rename(staging / final.name, final)
                except OSError as err:
                    raise _storage_error(err, run_dir, step, staging) from err
                shutil.rmtree(staging, ignore_errors=True)
            if limit:
                for old in complete_checkpoints(run_dir)[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
            if self.job is not None:
                self.job.checkpoint_saved(str(final), step)
        self.accelerator.wait_for_everyone()


def _storage_error(err: Exception, run_dir: Path, step: int, staging: Path) -> Exception:
    """A failed checkpoint write -> StorageError, the half-written staging folder removed first (so the space it held
    is free for the failure event); any other error comes back as it is."""
    # torch.save reports a failed write as RuntimeError("... file write failed"), safetensors as an OSError.
    if isinstance(err, RuntimeError) and "write" not in str(err).lower():
        return err
    shutil.rmtree(staging, ignore_errors=True)
    return storage_error(err, f"checkpoint-{step} under {run_dir}", run_dir)


# Write failures a person fixes on the store (full, read-only, quota, permissions), not in the request.
STORE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO}


def is_store_failure(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in STORE_ERRNOS


def storage_error(err: Exception, what: str, run_dir: Path) -> StorageError:
    """Issue 7: the artifact store filled up or turned read-only. Names what could not be written, why, and the
    newest complete checkpoint, which a write failure never touches (checkpoints appear by rename)."""
    newest = newest_checkpoint(run_dir)
    kept = f"the newest complete checkpoint, {newest.name}, is intact" if newest else "no earlier checkpoint exists"
    why = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err)
    return StorageError(
        f"could not write {what}: {why}; {kept}. Free space in (or make writable) the artifact store, then start "
        "the job again with the same job id to resume",
        detail=str(err)[:2000],
    )


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
