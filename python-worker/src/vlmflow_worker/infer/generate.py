"""Batched generation: GenerateRequest → GenerateResponse, shared by the gRPC handler, the CLI and the benchmark.

Steps: (1) check the generation settings, (2) load each item's images or video frames and build its conversation
from the task preset, (3) render it with the processor's chat template and encode it as the model's family takes
it (a video natively where the processor takes videos, else its frames as images), (4) generate in batches
(left padded, items of similar length together) cut by a budget, (5) decode answers with token counts and timings.
Every input problem is raised before any model work, as a WorkerError naming the item ("items[3].images[1]: ...").

Batches: with batch_size 0 a generate() call holds as many items as the worker's budget allows: rows × (longest
prompt + max_new_tokens) tokens (what the KV cache holds) and the items' image pixels (what the vision tower sees);
an explicit batch_size is the caller's choice and is used as given. The server merges concurrent requests into
shared calls with the same budget (batch_queue.py); `run_generate` here is the one-request path (CLI, benchmarks).

Tokenizer work (encode and decode) and model work are separate functions because the server runs them on different
threads: transformers' fast tokenizers are not safe to call from two threads at once (transformers#47085).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vlmflow.v1 import generate_pb2, worker_pb2
from vlmflow_worker import media
from vlmflow_worker.errors import BadData, InvalidArgument, OutOfMemory
from vlmflow_worker.families import family_of, family_of_processor
from vlmflow_worker.infer import prompts
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri

DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS_LIMIT = 4096
MAX_ITEMS = 1024


@dataclass
class PreparedItem:
    id: str
    conversation: list[dict]
    images: list[Image.Image]
    # Indices of `images` that are video frames: encoded whole, one tile each (encoding.py), as in training.
    frames: list[int] = field(default_factory=list)
    frame_timestamps: list[float] = field(default_factory=list)
    # A video item's sampled frames and its prompt, for a family whose processor takes videos itself (encode picks:
    # such a family gets the video whole, the others the conversation above, frames as images).
    video: media.VideoFrames | None = None
    prompt: str = ""
    what: str = ""  # how errors name the item: "items[3] (id)"
    # Videos whose {"type": "video"} parts `conversation` already holds, in order (a prepared row's native videos,
    # which the Evaluate job answers): encoded through the processor's video input beside `images`.
    videos: list[media.VideoFrames] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    """How much one generate() call may hold. `rows` > 0 (an explicit batch_size) is used as given, without the
    token and pixel limits: the caller chose it (a benchmark at batch 32, a GPU they know)."""

    tokens: int
    pixels: int
    rows: int = 0

    @classmethod
    def for_request(cls, settings: WorkerSettings, batch_size: int) -> Budget:
        return cls(settings.generate_batch_tokens, settings.generate_batch_pixels, batch_size)


@dataclass(frozen=True)
class Cost:
    """What one encoded item adds to a call: its prompt length and its real image pixels (tiles × height × width)."""

    tokens: int
    pixels: int

    @classmethod
    def of(cls, encoding: dict[str, Any]) -> Cost:
        pixels = 0
        for key in ("pixel_values", "pixel_values_videos"):
            if key not in encoding:
                continue
            values = encoding[key]
            if values.dim() == 5:  # Idefics3, SmolVLM: [1, tiles, 3, H, W]
                _, tiles, _, height, width = values.shape
                pixels += tiles * height * width
            else:  # Qwen-VL: [patches, 3 x frames x patch x patch], the image or video cut into flat patches
                pixels += values.shape[0] * values.shape[1] // 3
        return cls(int(encoding["input_ids"].shape[1]), pixels)


class BatchFill:
    """One generate() call being filled. The first item always fits (an item cannot be split, so one larger than
    the budget runs alone); after it, an item fits while the padded rows, the KV cache and the pixels stay within the
    budget."""

    def __init__(self, budget: Budget, new_tokens: int) -> None:
        self.budget = budget
        self.new_tokens = new_tokens
        self.rows = 0
        self.longest = 0
        self.pixels = 0

    def fits(self, cost: Cost) -> bool:
        if self.rows == 0:
            return True
        if self.budget.rows:
            return self.rows < self.budget.rows
        tokens = (self.rows + 1) * (max(self.longest, cost.tokens) + self.new_tokens)
        return tokens <= self.budget.tokens and self.pixels + cost.pixels <= self.budget.pixels

    def add(self, cost: Cost) -> None:
        self.rows += 1
        self.longest = max(self.longest, cost.tokens)
        self.pixels += cost.pixels


def plan_batches(costs: list[Cost], budget: Budget, new_tokens: int) -> list[list[int]]:
    """Item indices per generate() call: shortest prompts first (similar lengths together pad less), each call filled
    up to the budget."""
    batches: list[list[int]] = []
    fill: BatchFill | None = None
    for i in sorted(range(len(costs)), key=lambda i: costs[i].tokens):
        if fill is None or not fill.fits(costs[i]):
            fill = BatchFill(budget, new_tokens)
            batches.append([])
        fill.add(costs[i])
        batches[-1].append(i)
    return batches


@dataclass
class Generated:
    """One row of a generate() call, before decoding: the answer's token ids (cut at the first EOS, padding
    dropped), the prompt's real length and the seconds from the call's start to the row's EOS (or the end)."""

    tokens: list[int]
    prompt_tokens: int
    seconds: float


def generation_kwargs(config: Any) -> dict[str, Any]:
    """`model.generate` arguments from a vlmflow.v1.GenerationConfig (0 = the default), checked field by field."""
    max_new_tokens = config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    if not 0 < max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise InvalidArgument(f"generation.max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}")
    if config.temperature < 0:
        raise InvalidArgument(f"generation.temperature must be >= 0, got {config.temperature}")
    if not 0 <= config.top_p <= 1:
        raise InvalidArgument(f"generation.top_p must be between 0 and 1, got {config.top_p}")
    if config.top_k < 0:
        raise InvalidArgument(f"generation.top_k must be >= 0, got {config.top_k}")
    if config.repetition_penalty < 0:
        raise InvalidArgument(f"generation.repetition_penalty must be >= 0, got {config.repetition_penalty}")
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": config.do_sample}
    if config.do_sample:
        kwargs["temperature"] = config.temperature or 1.0
        kwargs["top_p"] = config.top_p or 1.0
        kwargs["top_k"] = config.top_k or None
    else:
        # Greedy: unset the sampling knobs a model's generation_config may carry, so none is silently ignored.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if config.repetition_penalty:
        kwargs["repetition_penalty"] = config.repetition_penalty
    return kwargs


def prepare_item(item: generate_pb2.GenerateItem, index: int, settings: WorkerSettings) -> PreparedItem:
    what = f"items[{index}]" + (f" ({item.id})" if item.id else "")
    task = item.task or prompts.infer_task(item)
    images = [media.load_image(image, settings, f"{what}.images[{j}]") for j, image in enumerate(item.images)]
    if task == generate_pb2.TASK_VIDEO:
        if not (item.HasField("video") and item.video.uri):
            raise InvalidArgument(f"{what}.video.uri is empty; the video task needs a video")
        if images:
            raise InvalidArgument(f"{what}: the video task takes a video and no images")
        if prompts.IMAGE_MARKER in item.prompt:
            raise InvalidArgument(
                f"{what}.prompt contains {prompts.IMAGE_MARKER} markers; the frames are placed for you"
            )
        video = item.video
        path = resolve_uri(video.uri, settings, what=f"{what}.video.uri")
        sampled = media.sample_video(
            path,
            what=f"{what}.video",
            num_frames=video.num_frames,
            fps=video.fps,
            max_frames=video.max_frames,
            start_seconds=video.start_seconds,
            end_seconds=video.end_seconds,
        )
        prompt = item.prompt.strip() or prompts.VIDEO_PROMPT
        conversation = prompts.video_conversation(prompt, sampled.timestamps, sampled.duration)
        frames = list(range(len(sampled.frames)))
        return PreparedItem(item.id, conversation, sampled.frames, frames, sampled.timestamps, sampled, prompt, what)
    if item.HasField("video") and item.video.uri:
        raise InvalidArgument(
            f"{what}.video is set but the task is {prompts.TASK_NAMES.get(task, task)}; use TASK_VIDEO"
        )
    return PreparedItem(item.id, prompts.build_conversation(item, task, what, len(images)), images, what=what)


def encode(processor, item: PreparedItem) -> dict[str, Any]:
    """One item's tensors, as its processor returns them: input_ids and attention_mask [1, L], and with images
    Idefics3's and SmolVLM's pixel_values [1, N, 3, H, W] or Qwen-VL's flat patches with their grids. A video goes in
    through the processor's own video input where the family has one (its video tokens, frame times and, for
    Qwen2.5-VL, rotary time steps), else as its frames, one image each."""
    from vlmflow_worker.encoding import encode_media, encode_row, encode_video  # torch: imported on first use

    try:
        if item.videos:
            if family_of_processor(processor).video != "native":
                raise BadData(
                    f"{item.what or item.id}: holds videos for a processor's video input, which this model's "
                    "processor lacks; prepare the dataset with this model"
                )
            text = processor.apply_chat_template(item.conversation, add_generation_prompt=True)
            return encode_media(processor, text, item.images, item.videos)
        if item.video is not None and family_of_processor(processor).video == "native":
            conversation = prompts.native_video_conversation(item.prompt)
            text = processor.apply_chat_template(conversation, add_generation_prompt=True)
            return encode_video(processor, text, item.video)
        text = processor.apply_chat_template(item.conversation, add_generation_prompt=True)
        return encode_row(processor, text, item.images, item.frames)
    except ValueError as err:
        # The processor's own checks on what it is given (Qwen-VL refuses an image more than 200 times wider than
        # high): the caller's input, so named like the other input errors rather than failing the worker.
        what = item.what or f"item {item.id!r}"
        raise BadData(f"{what}: the model's processor cannot take this item's images or video ({err})") from err


# Qwen-VL's visual inputs: each item's patches and grids, in row order, concatenated (the model walks them in the
# order of the rows' image and video tokens).
FLAT_VISUAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def collate(encodings: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Left-pads token ids (generation continues on the right). Idefics3's and SmolVLM's image stacks are zero-padded:
    all-zero images are how they mark padding (the model drops them). Qwen-VL's flat patches are concatenated, and its
    mm_token_type_ids (which tokens are image or video) left-padded as text: the model computes its multimodal rotary
    positions from them and the attention mask, padding left out."""
    import torch

    length = max(e["input_ids"].shape[1] for e in encodings)
    ids = torch.full((len(encodings), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), length), dtype=torch.long)
    for row, e in enumerate(encodings):
        n = e["input_ids"].shape[1]
        ids[row, length - n :] = e["input_ids"][0]
        mask[row, length - n :] = e["attention_mask"][0]
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if any("mm_token_type_ids" in e for e in encodings):
        types = torch.zeros((len(encodings), length), dtype=torch.long)
        for row, e in enumerate(encodings):
            if "mm_token_type_ids" in e:
                types[row, length - e["mm_token_type_ids"].shape[1] :] = e["mm_token_type_ids"][0]
        batch["mm_token_type_ids"] = types
    with_images = [e for e in encodings if "pixel_values" in e]
    if any(e[key].dim() != 5 for e in encodings for key in ("pixel_values", "pixel_values_videos") if key in e):
        for key in FLAT_VISUAL_KEYS:
            present = [e[key] for e in encodings if key in e]
            if present:
                batch[key] = torch.cat(present)
    elif with_images:
        num = max(e["pixel_values"].shape[1] for e in with_images)
        channels, height, width = (max(e["pixel_values"].shape[d] for e in with_images) for d in (2, 3, 4))
        pixels = torch.zeros((len(encodings), num, channels, height, width), dtype=with_images[0]["pixel_values"].dtype)
        pixel_mask = torch.zeros((len(encodings), num, height, width), dtype=torch.long)
        for row, e in enumerate(encodings):
            if "pixel_values" in e:
                _, n, _, h, w = e["pixel_values"].shape
                pixels[row, :n, :, :h, :w] = e["pixel_values"][0]
                pixel_mask[row, :n, :h, :w] = e["pixel_attention_mask"][0]
        batch["pixel_values"] = pixels
        batch["pixel_attention_mask"] = pixel_mask
    return batch


def eos_token_ids(model, processor) -> list[int]:
    """The model's EOS ids plus its family's end of turn (SmolVLM's `<end_of_utterance>`, Qwen-VL's `<|im_end|>`),
    when the tokenizer has it: a chat model ends its answer there, whatever its generation_config names."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    tokenizer = processor.tokenizer
    end_of_turn = tokenizer.convert_tokens_to_ids(family_of(model.config).end_of_turn)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    if not ids and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def pad_token_id(processor) -> int:
    tokenizer = processor.tokenizer
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _finish_timer(eos_ids: list[int], batch_size: int, started: float):
    """A stopping criterion that never stops anything and records when each row emits its first EOS."""
    import torch
    from transformers import StoppingCriteria

    class FinishTimes(StoppingCriteria):
        def __init__(self) -> None:
            self.times: list[float | None] = [None] * batch_size
            self.eos = torch.tensor(eos_ids)

        def __call__(self, input_ids, scores, **kwargs):
            done = torch.isin(input_ids[:, -1], self.eos.to(input_ids.device)).tolist()
            now = time.perf_counter() - started
            for row, finished in enumerate(done):
                if finished and self.times[row] is None:
                    self.times[row] = now
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return FinishTimes()


def generate_tokens(
    model, encodings: list[dict[str, Any]], kwargs: dict[str, Any], eos_ids: list[int], pad_id: int
) -> list[Generated]:
    """One generate() call over `encodings`, left padded. Touches the model only, never the tokenizer."""
    import torch
    from transformers import StoppingCriteriaList

    batch = collate(encodings, pad_id)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    for key in ("pixel_values", "pixel_values_videos"):
        if key in batch:
            batch[key] = batch[key].to(model.dtype)
    started = time.perf_counter()
    timer = _finish_timer(eos_ids, len(encodings), started)
    with torch.inference_mode():
        output = model.generate(
            **batch,
            **kwargs,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([timer]),
        )
    total = time.perf_counter() - started
    rows = []
    for row, tokens in enumerate(output[:, batch["input_ids"].shape[1] :].tolist()):
        end = next((i for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
        seconds = timer.times[row] if timer.times[row] is not None else total
        answer = [t for t in tokens[:end] if t != pad_id]
        rows.append(Generated(answer, int(encodings[row]["attention_mask"].sum()), seconds))
    return rows


def decode(processor, generated: Generated) -> str:
    return processor.tokenizer.decode(generated.tokens, skip_special_tokens=True).strip()


def generate_batch(
    model, processor, encodings: list[dict[str, Any]], kwargs: dict[str, Any]
) -> list[tuple[str, int, int, float]]:
    """Generates for one batch; returns (text, prompt_tokens, answer_tokens, seconds to last token) per row."""
    rows = generate_tokens(model, encodings, kwargs, eos_token_ids(model, processor), pad_token_id(processor))
    return [(decode(processor, g), g.prompt_tokens, len(g.tokens), g.seconds) for g in rows]


def out_of_memory(rows: int, err: Exception) -> OutOfMemory:
    return OutOfMemory(
        f"out of device memory generating a batch of {rows} items; lower batch_size or max_new_tokens "
        "(with batch_size 0, the worker's generate_batch_tokens / generate_batch_pixels)",
        detail=str(err),
    )


def seed_call(seed: int, call: int) -> None:
    """Seeded sampling: each call of a request starts from (seed, call number), so a request's answers depend on
    its own items only, whatever else the model thread ran in between."""
    import torch

    torch.manual_seed(seed + call)


def check_request(request: worker_pb2.GenerateRequest) -> dict[str, Any]:
    """The request's shape and generation settings; returns the `model.generate` arguments."""
    if not request.HasField("model") or not request.model.model_id:
        raise InvalidArgument("model.model_id is empty; give a hub id or a local model folder")
    if not request.items:
        raise InvalidArgument("items is empty; give at least one item")
    if len(request.items) > MAX_ITEMS:
        raise InvalidArgument(f"items has {len(request.items)} entries; at most {MAX_ITEMS} per request")
    if request.batch_size < 0:
        raise InvalidArgument(f"batch_size must be >= 0 (0 = by the worker's budget), got {request.batch_size}")
    return generation_kwargs(request.generation)


def build_response(
    prepared: list[PreparedItem],
    texts: list[str],
    generated: list[Generated],
    timings: generate_pb2.GenerateTimings,
) -> worker_pb2.GenerateResponse:
    """Results in request order (`texts` and `generated` are in request order too)."""
    return worker_pb2.GenerateResponse(
        results=[
            generate_pb2.GenerateResult(
                id=item.id,
                text=text,
                prompt_tokens=g.prompt_tokens,
                answer_tokens=len(g.tokens),
                generate_seconds=g.seconds,
                frame_timestamps=item.frame_timestamps,
            )
            for item, text, g in zip(prepared, texts, generated, strict=True)
        ],
        timings=timings,
    )


def run_generate(
    request: worker_pb2.GenerateRequest,
    settings: WorkerSettings,
    cache,
    *,
    extra_generate_kwargs: dict[str, Any] | None = None,
) -> worker_pb2.GenerateResponse:
    """One request on the calling thread (the CLI and benchmarks; the server merges requests in batch_queue.py)."""
    import torch

    started = time.perf_counter()
    # 1. Settings and inputs, checked before any model work.
    kwargs = check_request(request) | (extra_generate_kwargs or {})
    prepared = [prepare_item(item, i, settings) for i, item in enumerate(request.items)]
    media_seconds = time.perf_counter() - started

    # 2. The model (cached between calls).
    entry, loaded_now = cache.get(request.model)
    load_seconds = entry.load_seconds if loaded_now else 0.0

    # 3. Prompts → tensors.
    encode_started = time.perf_counter()
    encodings = [encode(entry.processor, item) for item in prepared]
    preprocess_seconds = media_seconds + time.perf_counter() - encode_started

    # 4. Calls cut by the budget, generated in turn; answers back in request order.
    eos_ids, pad_id = eos_token_ids(entry.model, entry.processor), pad_token_id(entry.processor)
    budget = Budget.for_request(settings, request.batch_size)
    batches = plan_batches([Cost.of(e) for e in encodings], budget, kwargs["max_new_tokens"])
    generated: dict[int, Generated] = {}
    generate_started = time.perf_counter()
    for call, rows in enumerate(batches):
        if request.generation.seed and request.generation.do_sample:
            seed_call(request.generation.seed, call)
        try:
            outputs = generate_tokens(entry.model, [encodings[i] for i in rows], kwargs, eos_ids, pad_id)
        except torch.OutOfMemoryError as err:
            raise out_of_memory(len(rows), err) from err
        generated.update(zip(rows, outputs, strict=True))
    generate_seconds = time.perf_counter() - generate_started

    ordered = [generated[i] for i in range(len(prepared))]
    texts = [decode(entry.processor, g) for g in ordered]
    timings = generate_pb2.GenerateTimings(
        load_seconds=load_seconds,
        preprocess_seconds=preprocess_seconds,
        generate_seconds=generate_seconds,
        total_seconds=time.perf_counter() - started,
    )
    return build_response(prepared, texts, ordered, timings)
