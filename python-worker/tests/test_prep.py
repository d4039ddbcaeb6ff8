"""PrepareDataset through the real worker: the four layouts, the LLaMA-Factory demo as-is, drop reasons, the
cache, path confinement and the failures a person must see."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest
from PIL import Image

from vlmflow.v1 import common_pb2, jobs_pb2, worker_pb2
from vlmflow_worker.fixtures.synthetic import generate
from vlmflow_worker.media import DEFAULT_NUM_FRAMES

from .conftest import REPO_ROOT, WorkerProcess, start_worker

# One torch thread per job process: the machine is small and shared; more threads only contend.
os.environ.setdefault("VLMFLOW_TORCH_THREADS", "1")

SHARED_DATA = (REPO_ROOT / "../shared/data").resolve()
DEMO = SHARED_DATA / "llamafactory-mllm-demo"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def prep_worker(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    proc = start_worker(
        tmp_path_factory.mktemp("artifacts"), "--data-root", str(data_dir), "--data-root", str(SHARED_DATA)
    )
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=60)


def prepare(worker: WorkerProcess, job_id: str, sources, model: str = "", **fields) -> list[jobs_pb2.JobEvent]:
    request = jobs_pb2.PrepareDatasetRequest(
        job_id=job_id, sources=sources, model=common_pb2.ModelRef(model_id=model), **fields
    )
    return [r.event for r in worker.stub().PrepareDataset(request, timeout=180)]


def end(events: list[jobs_pb2.JobEvent]):
    assert events[0].WhichOneof("event") == "accepted"
    last = events[-1]
    assert last.WhichOneof("event") in ("completed", "failed")
    return getattr(last, last.WhichOneof("event"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reads_the_llamafactory_demo_as_is(prep_worker: WorkerProcess, tiny_model_path: Path) -> None:
    sources = [
        jobs_pb2.DatasetSource(uri=str(DEMO / "mllm_demo.json"), layout=jobs_pb2.DATASET_LAYOUT_SHAREGPT),
        jobs_pb2.DatasetSource(uri=str(DEMO / "mllm_video_demo.json")),
    ]
    completed = end(prepare(prep_worker, "demo", sources, str(tiny_model_path), max_length=4096))
    assert completed.metrics["rows_kept"] == 9, completed
    assert completed.metrics["tokens_max"] > 80  # image tokens are counted
    folder = Path(completed.artifacts["dataset"])
    rows = [json.loads(line) for name in ("train.jsonl", "eval.jsonl") for line in (folder / name).open()]
    first = next(r for r in rows if "Kane" in json.dumps(r))
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
    assert len(first["images"]) == 2 and first["images"][0] == first["images"][1]  # stored once
    assert (folder / first["images"][0]).is_file()
    video_row = next(r for r in rows if "baby" in json.dumps(r))
    assert len(video_row["images"]) == DEFAULT_NUM_FRAMES  # a video becomes the frames Generate samples

    again = end(prepare(prep_worker, "demo-again", sources, str(tiny_model_path), max_length=4096))
    assert again.cached and again.fingerprint == completed.fingerprint


def test_same_job_id_replays_the_recorded_result(prep_worker: WorkerProcess, data_dir: Path) -> None:
    generate("count_dots", 6, 0, data_dir / "dots")
    sources = [jobs_pb2.DatasetSource(uri=str(data_dir / "dots" / "data.jsonl"))]
    first = prepare(prep_worker, "replay", sources)
    second = prepare(prep_worker, "replay", sources)
    assert [e.sequence for e in second] == [e.sequence for e in first]
    assert second[0].accepted.attached and not first[0].accepted.attached
    job = prep_worker.stub().GetJob(worker_pb2.GetJobRequest(job_id="replay")).job
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_vqa_preference_parquet_and_image_folder_layouts(prep_worker: WorkerProcess, data_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    generate("shape_colour", 4, 1, data_dir / "vqa")
    image = str(data_dir / "vqa" / "images" / "shape_colour-00000.png")
    png = Path(image).read_bytes()
    vqa = write_jsonl(data_dir / "vqa.jsonl", [{"img": image, "query": "Colour?", "answers": ["red", "red"]}] * 3)
    pq.write_table(
        pa.Table.from_pylist([{"image": {"bytes": png, "path": "x.png"}, "question": "Q?", "answer": "A"}] * 3),
        data_dir / "vqa.parquet",
    )
    (data_dir / "folder").mkdir()
    Image.open(image).save(data_dir / "folder" / "a.png")
    (data_dir / "folder" / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a shape"}) + "\n")
    generate("count_dots", 4, 2, data_dir / "pref", preference=True)
    rlaif = write_jsonl(
        data_dir / "rlaif.jsonl", [{"image": image, "question": "What?", "chosen": "red", "rejected": "blue"}] * 2
    )
    cases = {
        "vqa-parquet-folder": [
            jobs_pb2.DatasetSource(uri=str(vqa), columns={"img": "image", "query": "question"}),
            jobs_pb2.DatasetSource(uri=str(data_dir / "vqa.parquet"), layout=jobs_pb2.DATASET_LAYOUT_VQA),
            jobs_pb2.DatasetSource(uri=str(data_dir / "folder")),
        ],
        "pref": [
            jobs_pb2.DatasetSource(uri=str(data_dir / "pref" / "data.jsonl")),
            jobs_pb2.DatasetSource(uri=str(rlaif), layout=jobs_pb2.DATASET_LAYOUT_PREFERENCE),
        ],
    }
    for name, sources in cases.items():
        completed = end(prepare(prep_worker, f"layout-{name}", sources))
        assert completed.metrics["rows_dropped"] == 0, (name, completed)
        assert completed.metrics["rows_kept"] == {"pref": 6, "vqa-parquet-folder": 7}[name]
        meta = json.loads((Path(completed.artifacts["dataset"]) / "dataset.json").read_text())
        assert meta["kind"] == ("preference" if name == "pref" else "sft"), name
    rows = (Path(completed.artifacts["dataset"]) / "train.jsonl").read_text().splitlines()
    assert {"prompt", "chosen", "rejected", "images"} <= set(json.loads(rows[0]))


def test_each_drop_reason_is_counted_and_explained(
    prep_worker: WorkerProcess, data_dir: Path, tiny_model_path: Path
) -> None:
    generate("shape_colour", 6, 3, data_dir / "good")
    good = [json.loads(line) for line in (data_dir / "good" / "data.jsonl").open()]
    for row in good:
        row["images"] = [str(data_dir / "good" / p) for p in row["images"]]
    (data_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    user = {"role": "user", "content": "<image>What colour is the shape?"}
    bad = [
        {"messages": [user, {"role": "assistant", "content": "red"}], "images": [str(data_dir / "nope.png")]},
        {"messages": [user, {"role": "assistant", "content": "red"}], "images": [str(data_dir / "corrupt.png")]},
        {"messages": [user, {"role": "assistant", "content": "red"}], "images": []},
        {"messages": [user, {"role": "assistant", "content": "red " * 400}], "images": good[0]["images"]},
        {"messages": [user], "images": good[0]["images"]},
        {"messages": [user, {"role": "assistant", "content": "red"}], "images": ["/etc/hostname"]},
    ]
    path = write_jsonl(data_dir / "bad.jsonl", good + bad)
    source = [jobs_pb2.DatasetSource(uri=str(path), layout=jobs_pb2.DATASET_LAYOUT_SHAREGPT)]
    source[0].layout = jobs_pb2.DATASET_LAYOUT_AUTO
    completed = end(prepare(prep_worker, "drops", source, str(tiny_model_path), max_length=256, max_drop_fraction=0.6))
    reasons = ("missing_image", "corrupt_image", "marker_mismatch", "too_long", "no_assistant_turn")
    for reason in (*reasons, "image_outside_roots"):
        assert completed.metrics[f"dropped_{reason}"] == 1, (reason, dict(completed.metrics))
    assert completed.metrics["rows_kept"] == 6
    stats = json.loads(Path(completed.artifacts["stats"]).read_text())
    assert "dropped rather than cut" in stats["drop_examples"]["too_long"][0]["detail"]

    failed = end(prepare(prep_worker, "drops-strict", source, str(tiny_model_path), max_length=256))
    assert failed.reason == jobs_pb2.FAILURE_REASON_BAD_DATA
    assert "6 of 12 rows dropped" in failed.message and "too_long: 1" in failed.message


def test_path_outside_the_roots_is_refused_before_starting(prep_worker: WorkerProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        prepare(prep_worker, "escape", [jobs_pb2.DatasetSource(uri="../../etc/passwd")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sources[0].uri" in err.value.details() and "outside the allowed roots" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        prep_worker.stub().GetJob(worker_pb2.GetJobRequest(job_id="escape"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_empty_dataset_and_no_assistant_turn_fail_with_bad_data(prep_worker: WorkerProcess, data_dir: Path) -> None:
    empty = data_dir / "empty.jsonl"
    empty.write_text("")
    failed = end(prepare(prep_worker, "empty", [jobs_pb2.DatasetSource(uri=str(empty))]))
    assert failed.reason == jobs_pb2.FAILURE_REASON_BAD_DATA and "no rows" in failed.message

    rows = [{"messages": [{"role": "user", "content": "hello"}]}] * 3
    path = write_jsonl(data_dir / "no_answer.jsonl", rows)
    failed = end(prepare(prep_worker, "no-answer", [jobs_pb2.DatasetSource(uri=str(path))]))
    assert failed.reason == jobs_pb2.FAILURE_REASON_BAD_DATA
    assert "no_assistant_turn: 3" in failed.message


def test_a_hub_dataset_id_without_a_hub_fails_not_found_quickly(prep_worker: WorkerProcess) -> None:
    started = time.monotonic()
    failed = end(prepare(prep_worker, "hub", [jobs_pb2.DatasetSource(uri="HuggingFaceM4/ChartQA", split="train")]))
    assert failed.reason == jobs_pb2.FAILURE_REASON_NOT_FOUND and "hub" in failed.message
    assert time.monotonic() - started < 60
