"""PrepareDataset's process pool (bench/prep.py measures it): the prepared dataset is byte-identical with the pool on
and off, drops included, in the input order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmflow.v1 import common_pb2, jobs_pb2
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.jobs.context import JobContext
from vlmflow_worker.prep import job as prep
from vlmflow_worker.serve.settings import WorkerSettings


def prepare(root: Path, data: Path, model: Path, name: str) -> Path:
    settings = WorkerSettings(host="127.0.0.1", port=0, artifact_root=root, data_roots=[model.parent], job_capacity=1)
    request = jobs_pb2.PrepareDatasetRequest(
        job_id=name,
        sources=[jobs_pb2.DatasetSource(uri=str(data), layout=jobs_pb2.DATASET_LAYOUT_MESSAGES)],
        model=common_pb2.ModelRef(model_id=str(model)),
        max_length=2048,
        eval_fraction=0.2,
        max_drop_fraction=0.5,
        output_uri=name,
    )
    (root / "jobs" / name).mkdir(parents=True)
    return Path(prep.run(request, JobContext(name, root / "jobs" / name, settings)).artifacts["dataset"])


def test_the_pool_prepares_the_same_dataset_as_one_process(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = generate("shape_colour", 40, 0, tmp_path / "data")
    lines = data.read_text().splitlines()
    lines[30] = json.dumps({**json.loads(lines[30]), "images": ["missing.png"]})  # a drop past the serial head
    data.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(prep, "SERIAL_ROWS", 8)  # the pool takes rows 9-40

    monkeypatch.setenv(prep.PROCESSES_ENV, "1")
    alone = prepare(tmp_path, data, tiny_model_path, "alone")
    monkeypatch.setenv(prep.PROCESSES_ENV, "2")
    pooled = prepare(tmp_path, data, tiny_model_path, "pooled")

    for name in ("train.jsonl", "eval.jsonl"):
        assert (pooled / name).read_bytes() == (alone / name).read_bytes()
    stats = [json.loads((folder / "stats.json").read_text()) for folder in (alone, pooled)]
    assert stats[0]["dropped"] == {"missing_image": 1} and stats[0]["drop_examples"] == stats[1]["drop_examples"]
    assert stats[0]["rows_kept"] == stats[1]["rows_kept"] == 39
    assert sorted(p.name for p in (alone / "images").iterdir()) == sorted(p.name for p in (pooled / "images").iterdir())
