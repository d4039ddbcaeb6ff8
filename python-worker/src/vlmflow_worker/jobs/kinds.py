"""JobKind -> the module whose `JOB` is its JobSpec. Adding a kind is adding a line here (and its module)."""

from __future__ import annotations

import grpc

from vlmflow.v1 import jobs_pb2
from vlmflow_worker import heavy_imports
from vlmflow_worker.errors import WorkerError
from vlmflow_worker.jobs.spec import JobSpec

ENTRY_MODULES: dict[int, str] = {
    jobs_pb2.JOB_KIND_PREPARE_DATASET: "vlmflow_worker.prep.job",
    jobs_pb2.JOB_KIND_TRAIN_SFT: "vlmflow_worker.train.job",
    jobs_pb2.JOB_KIND_TRAIN_DPO: "vlmflow_worker.train.dpo",
    jobs_pb2.JOB_KIND_TRAIN_GRPO: "vlmflow_worker.train.grpo",
    jobs_pb2.JOB_KIND_EVALUATE: "vlmflow_worker.evaluate.job",
    jobs_pb2.JOB_KIND_EXPORT: "vlmflow_worker.export",
}


class Unimplemented(WorkerError):
    """The job kind has no entry in this worker."""

    status = grpc.StatusCode.UNIMPLEMENTED


def spec_for(kind: int) -> JobSpec:
    module = ENTRY_MODULES.get(kind)
    if module is None:
        raise Unimplemented(f"{jobs_pb2.JobKind.Name(kind)} jobs are not implemented by this worker yet")
    return heavy_imports.import_module(module).JOB  # the server calls this from the event loop
