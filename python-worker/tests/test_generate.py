"""Generate on the tiny model: each task preset on the real demo photos and videos, batching with left padding,
greedy and seeded sampling, and every bad input refused with an error naming the item."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmflow.v1 import common_pb2, generate_pb2, worker_pb2
from vlmflow_worker.errors import BadData, InvalidArgument, NotFound, WorkerError
from vlmflow_worker.infer.generate import run_generate
from vlmflow_worker.models import ModelCache
from vlmflow_worker.serve.settings import WorkerSettings

DEMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo"
DATA = DEMO / "mllm_demo_data"
Item = generate_pb2.GenerateItem


def photo(name: str) -> common_pb2.Image:
    return common_pb2.Image(uri=str(DATA / name))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> WorkerSettings:
    if not DATA.is_dir():
        pytest.fail(f"the shared demo data is missing (a broken checkout: ../shared sits beside the clone) at {DEMO}")
    return WorkerSettings(artifact_root=tmp_path_factory.mktemp("artifacts"), data_roots=[DEMO])


@pytest.fixture(scope="module")
def cache(settings: WorkerSettings) -> ModelCache:
    return ModelCache(settings=settings, device="cpu")


@pytest.fixture
def generate(tiny_model_path: Path, settings: WorkerSettings, cache: ModelCache):
    def run(*items: Item, batch_size: int = 0, **generation) -> worker_pb2.GenerateResponse:
        request = worker_pb2.GenerateRequest(
            model=common_pb2.ModelRef(model_id=str(tiny_model_path)),
            items=items,
            generation=common_pb2.GenerationConfig(**{"max_new_tokens": 6, **generation}),
            batch_size=batch_size,
        )
        return run_generate(request, settings, cache)

    return run


def _chat(*turns: tuple[str, str]) -> list[generate_pb2.ChatMessage]:
    return [generate_pb2.ChatMessage(role=role, text=text) for role, text in turns]


def test_each_task_preset_answers_on_real_data(generate) -> None:
    items = [
        Item(id="caption", task=generate_pb2.TASK_CAPTION, images=[photo("1.jpg")]),
        Item(id="vqa", task=generate_pb2.TASK_VQA, prompt="Who is he?", images=[photo("2.jpg")]),
        Item(id="ocr", task=generate_pb2.TASK_OCR, images=[common_pb2.Image(data=(DATA / "3.jpg").read_bytes())]),
        Item(
            id="multi",
            task=generate_pb2.TASK_MULTI_IMAGE,
            prompt="Same place?",
            images=[photo("1.jpg"), photo("3.jpg")],
        ),
        Item(
            id="mp4",
            task=generate_pb2.TASK_VIDEO,
            prompt="Why is this funny?",
            video=common_pb2.Video(uri=str(DATA / "1.mp4"), num_frames=4),
        ),
        Item(
            id="avi",
            task=generate_pb2.TASK_VIDEO,
            video=common_pb2.Video(uri=str(DATA / "2.avi"), fps=0.5, max_frames=3),
        ),
        Item(
            id="chat",
            task=generate_pb2.TASK_CHAT,
            messages=_chat(("user", "<image>Who are they?"), ("assistant", "Players."), ("user", "Doing what?<image>")),
            images=[photo("1.jpg"), photo("1.jpg")],
        ),
        Item(id="text-only", prompt="Say hello."),
    ]
    response = generate(*items, batch_size=4)
    assert [r.id for r in response.results] == [i.id for i in items]
    for result in response.results:
        assert result.prompt_tokens > 0
        assert 0 <= result.answer_tokens <= 6
        assert 0 < result.generate_seconds <= response.timings.generate_seconds
    by_id = {r.id: r for r in response.results}
    # Image tokens count in the prompt: one photo is 16 tokens per 64 px tile (up to 5 tiles).
    assert by_id["multi"].prompt_tokens > by_id["vqa"].prompt_tokens > by_id["text-only"].prompt_tokens + 16
    assert len(by_id["mp4"].frame_timestamps) == 4
    assert list(by_id["mp4"].frame_timestamps) == sorted(by_id["mp4"].frame_timestamps)
    assert len(by_id["avi"].frame_timestamps) == 3
    assert not by_id["caption"].frame_timestamps
    timings = response.timings
    assert timings.total_seconds >= timings.generate_seconds + timings.preprocess_seconds > 0


def test_batched_answers_equal_one_by_one_answers(generate) -> None:
    """Left padding and zero-padded image stacks must not change what an item gets."""
    items = [
        Item(id="a", task=generate_pb2.TASK_CAPTION, images=[photo("1.jpg")]),
        Item(id="b", task=generate_pb2.TASK_VQA, prompt="What is in the picture, in detail?", images=[photo("2.jpg")]),
        Item(id="c", prompt="Hello."),
        Item(id="d", task=generate_pb2.TASK_VIDEO, video=common_pb2.Video(uri=str(DATA / "3.mp4"), num_frames=2)),
    ]
    batched = generate(*items, max_new_tokens=8)
    single = [generate(item, max_new_tokens=8).results[0] for item in items]
    for together, alone in zip(batched.results, single, strict=True):
        assert (together.text, together.answer_tokens, together.prompt_tokens) == (
            alone.text,
            alone.answer_tokens,
            alone.prompt_tokens,
        )


def test_sampling_is_seeded_and_greedy_is_deterministic(generate) -> None:
    item = Item(id="x", task=generate_pb2.TASK_CAPTION, images=[photo("3.jpg")])
    greedy = [generate(item, max_new_tokens=8).results[0].text for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = [
        generate(item, max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95, top_k=50, seed=seed)
        .results[0]
        .text
        for seed in (7, 7, 8)
    ]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2] or sampled[0] != greedy[0]


BAD_ITEMS = [
    (Item(task=generate_pb2.TASK_VQA, prompt="  ", images=[photo("1.jpg")]), InvalidArgument, "prompt is empty"),
    (Item(task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(data=b"junk")]), BadData, "not an image"),
    (
        Item(task=generate_pb2.TASK_CAPTION, images=[common_pb2.Image(data=(DATA / "2.jpg").read_bytes()[:3000])]),
        BadData,
        "corrupt or truncated",
    )
    if DATA.is_dir()
    else (Item(), InvalidArgument, ""),
    (
        Item(task=generate_pb2.TASK_VIDEO, video=common_pb2.Video(uri=str(DATA / "gone.mp4"))),
        NotFound,
        "does not exist",
    ),
    (
        Item(task=generate_pb2.TASK_CHAT, messages=_chat(("user", "<image><image>Compare")), images=[photo("1.jpg")]),
        InvalidArgument,
        "2 <image> markers but the item has 1 images",
    ),
    (Item(task=generate_pb2.TASK_MULTI_IMAGE, prompt="Compare", images=[photo("1.jpg")]), InvalidArgument, "two"),
    (Item(task=generate_pb2.TASK_CAPTION, prompt="<image> this", images=[photo("1.jpg")]), InvalidArgument, "markers"),
    (Item(task=generate_pb2.TASK_CHAT, messages=_chat(("robot", "hi"))), InvalidArgument, "role 'robot'"),
]


@pytest.mark.parametrize(("item", "error", "message"), BAD_ITEMS, ids=lambda v: getattr(v, "__name__", None))
def test_bad_items_are_refused_naming_the_item(generate, item: Item, error: type[WorkerError], message: str) -> None:
    good = Item(id="fine", task=generate_pb2.TASK_CAPTION, images=[photo("1.jpg")])
    item.id = "bad-one"
    with pytest.raises(error, match=r"items\[1\] \(bad-one\)") as raised:
        generate(good, item)
    assert message in raised.value.message


def test_bad_generation_settings_and_models(generate, settings: WorkerSettings, cache: ModelCache) -> None:
    item = Item(task=generate_pb2.TASK_CAPTION, images=[photo("1.jpg")])
    with pytest.raises(InvalidArgument, match="generation.temperature"):
        generate(item, do_sample=True, temperature=-1)
    with pytest.raises(InvalidArgument, match="generation.max_new_tokens"):
        generate(item, max_new_tokens=100_000)
    unknown = worker_pb2.GenerateRequest(model=common_pb2.ModelRef(model_id="nobody/no-such-vlm"), items=[item])
    with pytest.raises(NotFound, match="model not found locally and the hub is unreachable"):
        run_generate(unknown, settings, cache)
    with pytest.raises(InvalidArgument, match="items is empty"):
        run_generate(worker_pb2.GenerateRequest(model=unknown.model), settings, cache)
