"""The media and dataset half of the bad-input corpus, through a real worker process: Generate and PrepareDataset.

Binary cases are made at test time in a temporary data root (nothing binary is committed): corrupt, truncated and
decompression-bomb images, a missing file, `../` and absolute paths outside the roots, a video without frames and
one with an unknown codec, preference rows with an empty rejected answer, and more. Every case must:
- fail with a typed error whose message names the problem (and the item or file);
- leave the worker serving (Health answers, and a good request still works at the end);
- leave no partial output that looks complete: no dataset folder with dataset.json, no staging folder, and no
  `completed` event in the job's log.

The config half of the corpus is test/bad-inputs/configs/*.json (test/bad-input-configs.test.ts).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import grpc
import pytest
from PIL import Image

from vlmflow.v1 import common_pb2, generate_pb2, jobs_pb2, worker_pb2
from vlmflow_worker.jobs import eventlog

from .conftest import REPO_ROOT, WorkerProcess, start_worker

DEMO = (REPO_ROOT / "../shared/data/llamafactory-mllm-demo/mllm_demo_data").resolve()


@dataclass
class Media:
    """The corpus's files, in a data root of the worker; `outside` is a real image the worker must not read."""

    root: Path
    outside: Path


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _video_without_frames(path: Path) -> None:
    """An MP4 container closed before any frame was written."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()


def _video_with_unknown_codec(path: Path) -> None:
    """The demo AVI with its codec tag (FourCC) replaced by one no decoder knows."""
    data = (DEMO / "2.avi").read_bytes()
    tag = data[data.index(b"strf") + 24 : data.index(b"strf") + 28]
    path.write_bytes(data.replace(tag, b"QQQQ"))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    if not DEMO.is_dir():
        pytest.fail(f"the shared demo data is missing (a broken checkout: ../shared sits beside the clone) at {DEMO}")
    root = tmp_path_factory.mktemp("bad-media")
    outside = tmp_path_factory.mktemp("outside-the-roots") / "secret.png"
    outside.write_bytes(_png((32, 32)))
    (root / "good.png").write_bytes(_png((64, 64)))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 20)
    jpeg = (DEMO / "1.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "bomb.png").write_bytes(_png((12_000, 12_000), "1"))  # 144 Mpx in a few hundred KB
    (root / "empty.png").write_bytes(b"")
    _video_without_frames(root / "no_frames.mp4")
    _video_with_unknown_codec(root / "unknown_codec.avi")
    (root / "not_a_video.mp4").write_bytes(b"\x00\x01 not a video " * 100)
    return Media(root, outside)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, media: Media, tiny_model_path: Path) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("artifacts"), "--data-root", str(media.root))
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=60)


def assert_serving(worker: WorkerProcess) -> None:
    health = worker.stub().Health(worker_pb2.HealthRequest(), timeout=10)
    assert health.jobs_running == 0
    assert worker.process.poll() is None


# ---- Generate ------------------------------------------------------------------------------------------------


def _image_uri(m: Media, name: str) -> common_pb2.Image:
    return common_pb2.Image(uri=str(m.root / name))


GENERATE_CASES = {
    # name: (item builder, gRPC status, substrings of the message)
    "corrupt image bytes": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[common_pb2.Image(data=b"\x89PNG garbage")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["items[0] (x).images[0]", "not an image"],
    ),
    "corrupt image file": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[_image_uri(m, "corrupt.png")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["images[0]", "not an image"],
    ),
    "truncated image": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[_image_uri(m, "truncated.jpg")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["images[0]", "corrupt or truncated"],
    ),
    "decompression bomb": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[_image_uri(m, "bomb.png")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["12000x12000", "decompression-bomb guard"],
    ),
    "empty image file": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[_image_uri(m, "empty.png")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["images[0]"],
    ),
    "empty inline image": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[common_pb2.Image(data=b"")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["images[0]", "empty"],
    ),
    "missing image file": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[_image_uri(m, "missing.png")]),
        grpc.StatusCode.NOT_FOUND,
        ["images[0].uri", "missing.png", "does not exist"],
    ),
    "dot-dot path out of the roots": (
        lambda m: generate_pb2.GenerateItem(
            id="x", images=[common_pb2.Image(uri=f"{m.root}/../{m.outside.parent.name}/secret.png")]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["images[0].uri", "outside the allowed roots"],
    ),
    "absolute path out of the roots": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[common_pb2.Image(uri=str(m.outside))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["images[0].uri", "outside the allowed roots"],
    ),
    "system file out of the roots": (
        lambda m: generate_pb2.GenerateItem(id="x", images=[common_pb2.Image(uri="/etc/passwd")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["/etc/passwd", "outside the allowed roots"],
    ),
    "video without frames": (
        lambda m: generate_pb2.GenerateItem(
            id="clip", task=generate_pb2.TASK_VIDEO, video=common_pb2.Video(uri=str(m.root / "no_frames.mp4"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["items[0] (clip).video", "no_frames.mp4", "no video stream"],
    ),
    "video with an unknown codec": (
        lambda m: generate_pb2.GenerateItem(
            id="clip", task=generate_pb2.TASK_VIDEO, video=common_pb2.Video(uri=str(m.root / "unknown_codec.avi"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["items[0] (clip).video", "unknown_codec.avi"],
    ),
    "not a video": (
        lambda m: generate_pb2.GenerateItem(
            id="clip", task=generate_pb2.TASK_VIDEO, video=common_pb2.Video(uri=str(m.root / "not_a_video.mp4"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["not_a_video.mp4", "not a readable video"],
    ),
    "missing video": (
        lambda m: generate_pb2.GenerateItem(
            id="clip", task=generate_pb2.TASK_VIDEO, video=common_pb2.Video(uri=str(m.root / "gone.mp4"))
        ),
        grpc.StatusCode.NOT_FOUND,
        ["items[0] (clip).video", "does not exist"],
    ),
}


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_generate_refuses_bad_media_and_keeps_serving(
    served: WorkerProcess, media: Media, tiny_model_path: Path, case: str
) -> None:
    build, status, parts = GENERATE_CASES[case]
    item = build(media)
    if not item.task:
        item.task = generate_pb2.TASK_CAPTION
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        items=[item],
        generation=common_pb2.GenerationConfig(max_new_tokens=2),
    )
    with pytest.raises(grpc.RpcError) as raised:
        served.stub().Generate(request, timeout=120)
    assert raised.value.code() == status, raised.value.details()
    for part in parts:
        assert part in raised.value.details(), raised.value.details()
    assert_serving(served)


def test_generate_refuses_an_unknown_model(served: WorkerProcess, media: Media) -> None:
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(media.root / "no-such-model")),
        items=[
            generate_pb2.GenerateItem(id="x", task=generate_pb2.TASK_CAPTION, images=[_image_uri(media, "good.png")])
        ],
    )
    with pytest.raises(grpc.RpcError) as raised:
        served.stub().Generate(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in raised.value.details() and "does not exist" in raised.value.details()
    assert_serving(served)


def test_generate_refuses_an_unknown_quantization_value(served: WorkerProcess, media: Media) -> None:
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(media.root / "no-such-model"), quantization=7),  # type: ignore[arg-type]
        items=[
            generate_pb2.GenerateItem(id="x", task=generate_pb2.TASK_CAPTION, images=[_image_uri(media, "good.png")])
        ],
    )
    with pytest.raises(grpc.RpcError) as raised:
        served.stub().Generate(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model.quantization 7 is not a value this worker knows" in raised.value.details()
    assert_serving(served)


# ---- PrepareDataset ------------------------------------------------------------------------------------------


def _rows(m: Media, case: str) -> list[dict]:
    """Three rows (so every drop is over max_drop_fraction) showing one problem."""
    image_rows = {
        "corrupt image": str(m.root / "corrupt.png"),
        "truncated image": str(m.root / "truncated.jpg"),
        "decompression bomb": str(m.root / "bomb.png"),
        "missing image": str(m.root / "missing.png"),
        "dot-dot image path": "../../../../../../etc/passwd",
        "absolute image path outside": str(m.outside),
    }
    if case in image_rows:
        ref = image_rows[case]
        return [{"question": "What colour?", "answer": "red", "image": ref}] * 3
    if case in ("video without frames", "video with an unknown codec"):
        name = "no_frames.mp4" if case == "video without frames" else "unknown_codec.avi"
        turn = [{"from": "human", "value": "<video>What happens?"}, {"from": "gpt", "value": "A cat."}]
        return [{"conversations": turn, "videos": [str(m.root / name)]}] * 3
    if case == "preference with empty rejected":
        good = str(m.root / "good.png")
        return [{"image": good, "question": "Colour?", "chosen": "red", "rejected": "  "}] * 3
    if case == "conversation without an answer":
        return [{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}] * 3
    if case == "more image markers than images":
        turn = [{"from": "human", "value": "<image><image>Same?"}, {"from": "gpt", "value": "Yes."}]
        return [{"conversations": turn, "images": [str(m.root / "good.png")]}] * 3
    raise KeyError(case)


PREP_ROW_CASES = {
    "corrupt image": ["corrupt_image", "corrupt.png", "not an image"],
    "truncated image": ["corrupt_image", "truncated.jpg", "corrupt or truncated"],
    "decompression bomb": ["corrupt_image", "bomb.png", "12000x12000", "decompression-bomb guard"],
    "missing image": ["missing_image", "missing.png", "does not exist"],
    "dot-dot image path": ["image_outside_roots", "outside the allowed roots"],
    "absolute image path outside": ["image_outside_roots", "outside the allowed roots"],
    "video without frames": ["corrupt_image", "no_frames.mp4", "has no video stream"],  # the sampler's words
    "video with an unknown codec": ["corrupt_image", "unknown_codec.avi"],
    "preference with empty rejected": ["no_assistant_turn", "no rejected answer"],
    "conversation without an answer": ["no_assistant_turn", "no assistant answer"],
    "more image markers than images": ["marker_mismatch", "2 image", "1 images"],
}


def prepare(worker: WorkerProcess, job_id: str, uri: str, out: str, **fields) -> list[jobs_pb2.JobEvent]:
    request = jobs_pb2.PrepareDatasetRequest(
        job_id=job_id, sources=[jobs_pb2.DatasetSource(uri=uri)], output_uri=out, **fields
    )
    return [r.event for r in worker.stub().PrepareDataset(request, timeout=180)]


def assert_nothing_looks_complete(worker: WorkerProcess, job_id: str, out: str) -> None:
    """No dataset folder (complete or staging) under the output, and the job's log ends failed, never completed."""
    output = worker.artifact_root / out
    leftovers = [p.name for p in output.iterdir()] if output.is_dir() else []
    assert leftovers == [], f"partial output left in {output}: {leftovers}"
    events = eventlog.read_events(eventlog.job_dir(worker.artifact_root, job_id) / eventlog.EVENTS)
    kinds = [e.WhichOneof("event") for e in events]
    assert "completed" not in kinds and kinds[-1] == "failed", kinds
    job = worker.stub().GetJob(worker_pb2.GetJobRequest(job_id=job_id), timeout=10).job
    assert job.state == jobs_pb2.JOB_STATE_FAILED


@pytest.mark.parametrize("case", list(PREP_ROW_CASES))
def test_prepare_fails_bad_rows_as_bad_data_leaving_nothing_complete(
    served: WorkerProcess, media: Media, tmp_path_factory: pytest.TempPathFactory, case: str
) -> None:
    slug = case.replace(" ", "-")
    source = media.root / f"{slug}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in _rows(media, case)))
    events = prepare(served, f"bad-{slug}", str(source), f"bad-datasets/{slug}")
    failed = events[-1].failed
    assert events[-1].WhichOneof("event") == "failed"
    assert failed.reason == jobs_pb2.FAILURE_REASON_BAD_DATA, failed
    assert "3 of 3 rows dropped" in failed.message, failed.message
    for part in PREP_ROW_CASES[case]:
        assert part in failed.message, failed.message
    assert_nothing_looks_complete(served, f"bad-{slug}", f"bad-datasets/{slug}")
    assert_serving(served)


def test_prepare_refuses_sources_outside_the_roots_or_missing_before_starting(
    served: WorkerProcess, media: Media
) -> None:
    cases = {
        "../../../../etc/passwd": (grpc.StatusCode.INVALID_ARGUMENT, "outside the allowed roots"),
        "/etc/passwd": (grpc.StatusCode.INVALID_ARGUMENT, "outside the allowed roots"),
        str(media.outside): (grpc.StatusCode.INVALID_ARGUMENT, "outside the allowed roots"),
        str(media.root / "missing.jsonl"): (grpc.StatusCode.NOT_FOUND, "does not exist"),
        "s3://bucket/data.jsonl": (grpc.StatusCode.INVALID_ARGUMENT, "s3:// scheme is not supported"),
    }
    for n, (uri, (status, part)) in enumerate(cases.items()):
        with pytest.raises(grpc.RpcError) as raised:
            prepare(served, f"refused-{n}", uri, "refused")
        assert raised.value.code() == status, (uri, raised.value.details())
        assert "sources[0].uri" in raised.value.details() or uri in raised.value.details(), raised.value.details()
        assert part in raised.value.details(), raised.value.details()
        assert not eventlog.job_dir(served.artifact_root, f"refused-{n}").exists()  # nothing started
    with pytest.raises(grpc.RpcError) as raised:
        prepare(served, "refused-out", str(media.root / "good.png"), "../../escaped")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output_uri" in raised.value.details() and "outside the allowed roots" in raised.value.details()
    assert not (served.artifact_root / "../../escaped").resolve().exists()
    assert_serving(served)


def test_prepare_fails_empty_malformed_and_mixed_sources(served: WorkerProcess, media: Media) -> None:
    (media.root / "empty.jsonl").write_text("")
    (media.root / "malformed.jsonl").write_text('{"question": "Q?", "answer"\nnot json at all\n[1, 2]\n')
    mixed = [
        {"image": str(media.root / "good.png"), "question": "Colour?", "chosen": "red", "rejected": "blue"},
        {"image": str(media.root / "good.png"), "question": "Colour?", "answer": "red"},
    ]
    (media.root / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mixed))
    cases = {
        "empty": "the sources hold no rows",
        "malformed": "malformed_row",
        "mixed": "mix preference rows",
    }
    for name, part in cases.items():
        events = prepare(served, f"bad-{name}", str(media.root / f"{name}.jsonl"), f"bad-datasets/{name}")
        assert events[-1].WhichOneof("event") == "failed", events[-1]
        assert events[-1].failed.reason == jobs_pb2.FAILURE_REASON_BAD_DATA
        assert part in events[-1].failed.message, events[-1].failed.message
        assert_nothing_looks_complete(served, f"bad-{name}", f"bad-datasets/{name}")
    assert_serving(served)


def test_prepare_with_an_unknown_model_is_not_found(served: WorkerProcess, media: Media) -> None:
    source = media.root / "one-good-row.jsonl"
    source.write_text(json.dumps({"image": str(media.root / "good.png"), "question": "Q?", "answer": "A"}) + "\n")
    request = jobs_pb2.PrepareDatasetRequest(
        job_id="bad-model",
        sources=[jobs_pb2.DatasetSource(uri=str(source))],
        model=common_pb2.ModelRef(model_id=str(media.root / "no-such-model")),
        output_uri="bad-datasets/model",
    )
    events = [r.event for r in served.stub().PrepareDataset(request, timeout=120)]
    assert events[-1].failed.reason == jobs_pb2.FAILURE_REASON_NOT_FOUND, events[-1]
    assert "no-such-model" in events[-1].failed.message
    assert_nothing_looks_complete(served, "bad-model", "bad-datasets/model")


def test_the_worker_still_answers_good_requests_after_the_corpus(
    served: WorkerProcess, media: Media, tiny_model_path: Path
) -> None:
    # Runs last in this module: the worker process went through every case above.
    request = worker_pb2.GenerateRequest(
        model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
        items=[
            generate_pb2.GenerateItem(id="ok", task=generate_pb2.TASK_CAPTION, images=[_image_uri(media, "good.png")])
        ],
        generation=common_pb2.GenerationConfig(max_new_tokens=2),
    )
    assert [r.id for r in served.stub().Generate(request, timeout=120).results] == ["ok"]
    source = media.root / "good.jsonl"
    rows = [{"image": str(media.root / "good.png"), "question": "Colour?", "answer": "black"}] * 4
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    events = prepare(served, "good-after-bad", str(source), "good-datasets")
    assert events[-1].WhichOneof("event") == "completed", events[-1]
    assert (Path(events[-1].completed.artifacts["dataset"]) / "dataset.json").is_file()
    assert served.process.poll() is None
