"""The SFT stage without the stack: the Train request the pipeline sent, run by calling the worker's training module
in this process, as bench/orchestration.ts's baseline (b). Prints one JSON line with its timings.

python-worker/.venv/bin/python bench/train_direct.py <job folder> <artifact root> <output uri>

The request comes from the pipeline's job folder (request.binpb), so both paths train with the same config; only the
output folder differs (a fresh one, so nothing resumes). `import_s` is the imports a job child also pays;
`train_s` is train_sft() from the start (dataset read, model load, adapters, training, adapter save) to its return.
"""

from __future__ import annotations

import json
import os
import sys
import time

started = time.perf_counter()

from pathlib import Path  # noqa: E402

from vlmflow.v1 import jobs_pb2  # noqa: E402
from vlmflow_worker.serve.settings import WorkerSettings  # noqa: E402
from vlmflow_worker.train.job import config_of  # noqa: E402
from vlmflow_worker.train.sft import train_sft  # noqa: E402

imported = time.perf_counter()


def main() -> int:
    folder, artifact_root, output_uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    meta = json.loads((folder / "job.json").read_text())
    settings = WorkerSettings(
        host="127.0.0.1",
        port=0,
        artifact_root=artifact_root,
        data_roots=[Path(p) for p in meta["settings"]["data_roots"]],
        job_capacity=1,
    )
    request = jobs_pb2.TrainRequest.FromString((folder / "request.binpb").read_bytes())
    request.output_uri = output_uri
    config = config_of(request, settings)
    if os.environ.get("VLMFLOW_TORCH_THREADS"):  # as a job child does
        import torch

        torch.set_num_threads(int(os.environ["VLMFLOW_TORCH_THREADS"]))
    begin = time.perf_counter()
    result = train_sft(config, None, settings)
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "train_s": end - begin,
                "global_step": result.metrics.get("global_step"),
                "train_loss": result.metrics.get("train_loss"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
