"""How a row's text and images become the model's inputs, one way for Generate, prep's token counts and the
training collator, so the model trains on exactly what it is served: video frames are shown whole, one tile each;
photos keep the processor's tiling. Tiling is Idefics3's and SmolVLM's (`do_image_splitting`); Qwen-VL resizes each
image whole, so there frames and photos are encoded alike. A video a family takes natively goes in whole through the
processor's video input (encode_media), with the same sampled frames wherever it is encoded."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from vlmflow_worker.errors import BadData

if TYPE_CHECKING:
    from vlmflow_worker.media import VideoFrames


def tiles_images(processor) -> bool:
    """Whether the processor cuts photos into tiles (Idefics3, SmolVLM). Qwen-VL's image processor has no such
    setting: handed `do_image_splitting` it only warns that it ignores it, so it is never handed one."""
    return hasattr(processor.image_processor, "do_image_splitting")


def frame_image_kwargs(processor, frames: bool) -> dict[str, Any]:
    """The processor settings for one item's images. Video frames are shown whole, one tile each (as SmolVLM does:
    many frames already cost many tokens); photos keep the processor's tiling. Generate, prep's token counts and the
    training collator all encode frames with this, so the model trains on the frames it is served."""
    return {"do_image_splitting": False} if frames and tiles_images(processor) else {}


def encode_row(
    processor, text: str, images: list[Image.Image], frames: Collection[int], *, offsets: bool = False
) -> dict[str, Any]:
    """One rendered row's tensors ([1, ...]), its images encoded as Generate encodes them: the images at indices
    `frames` are video frames, one tile each (frame_image_kwargs), the others photos, tiled. Prep counts
    tokens with this too, so its counts are the training lengths.

    With `offsets`, also where each token lies in the text the processor tokenized (`offset_mapping`, [1, n, 2]) and
    where that text differs from `text`: each image placeholder and its expansion (`text_replacement_offsets`, as
    transformers' processors return it: one list per row of {"span", "new_span"}). The collator's answer labels are
    read from them."""
    extra = {"return_offsets_mapping": True, "return_text_replacement_offsets": True} if offsets else {}
    if not images:
        return dict(processor(text=[text], return_tensors="pt", **extra))
    # Without tiling a frame is encoded as a photo is, so any mix of them goes in one call.
    kinds = {i in frames for i in range(len(images))} if tiles_images(processor) else {False}
    if len(kinds) == 1:
        kwargs = frame_image_kwargs(processor, kinds.pop())
        return dict(processor(text=[text], images=[images], return_tensors="pt", **kwargs, **extra))
    return encode_by_image(processor, text, images, frames, offsets=offsets)


def encode_by_image(
    processor, text: str, images: list[Image.Image], frames: Collection[int], *, offsets: bool = False
) -> dict[str, Any]:
    """A row with photos and frames: the processor takes one tiling setting per call, so each image is tiled on its
    own and the text expanded as the processor expands it (Idefics3Processor.replace_image_token). `offsets` as in
    encode_row, the expansions recorded as the processor records them."""
    token = processor.image_token
    pieces = text.split(token)
    if len(pieces) != len(images) + 1:
        raise BadData(f"the row has {len(pieces) - 1} image markers for {len(images)} images")
    tiles, masks, expanded, replacements = [], [], pieces[0], []
    at = len(pieces[0])  # where the next placeholder starts in `text`
    for i, (image, piece) in enumerate(zip(images, pieces[1:], strict=True)):
        kwargs = frame_image_kwargs(processor, i in frames)
        out = processor.image_processor([[image]], return_row_col_info=True, return_tensors="pt", **kwargs)
        tiles.append(out["pixel_values"][0])
        masks.append(out["pixel_attention_mask"][0])
        replacement = processor.replace_image_token(out, 0)
        replacements.append(
            {"span": (at, at + len(token)), "new_span": (len(expanded), len(expanded) + len(replacement))}
        )
        expanded += replacement + piece
        at += len(token) + len(piece)
    encoded = dict(processor.tokenizer([expanded], return_tensors="pt", return_offsets_mapping=offsets))
    if offsets:
        encoded["text_replacement_offsets"] = [replacements]
    return {**encoded, "pixel_values": torch.cat(tiles)[None], "pixel_attention_mask": torch.cat(masks)[None]}


def encode_video(processor, text: str, video: VideoFrames, *, offsets: bool = False) -> dict[str, Any]:
    """One rendered row with one video placeholder (the chat template's rendering of a {"type": "video"} part) and
    its frames, sampled already (media.sample_video): Generate's video task. encode_media with that video alone."""
    return encode_media(processor, text, [], [video], offsets=offsets)


def encode_media(
    processor, text: str, images: list[Image.Image], videos: list[VideoFrames], *, offsets: bool = False
) -> dict[str, Any]:
    """One rendered row's tensors ([1, ...]) for a family whose processor takes videos (families' video "native"):
    the row's photos as encode_row encodes them and its videos, sampled already (media.sample_video, as Generate and
    prep sample them), through the processor's own video input, which builds the family's video tokens (Qwen-VL's
    <|video_pad|> with its frame times, SmolVLM2's timestamped frames). The processor is told not to sample again; the
    metadata (video_metadata) gives it the frames' real times. Generate's video items, prep's token counts and the
    training collator's video rows all go through here, so a video trains as it is served.

    `offsets` as in encode_row: the video placeholders' expansions are in `text_replacement_offsets` too.
    SmolVLM2's processor returns a video's frames under the photos' key (`pixel_values`), so it takes a row's photos
    or one video per call, not both: such a row is BadData (prep drops it, naming why)."""
    if not videos:
        return encode_row(processor, text, images, [], offsets=offsets)
    if tiles_images(processor) and (images or len(videos) > 1):
        raise BadData(
            f"a row with {len(images)} photos and {len(videos)} videos: SmolVLM2's processor takes a row's photos or "
            "one video, not both; split the row"
        )
    arrays, metadata = [], []
    for video in videos:
        frames, times = list(video.frames), list(video.timestamps)
        # Qwen-VL's vision tower takes frames in pairs (temporal_patch_size) and Qwen3-VL refuses a shorter video:
        # a clip of one frame shows that frame twice, as qwen-vl-utils pads frame counts.
        while len(frames) < getattr(processor.video_processor, "temporal_patch_size", 1):
            frames.append(frames[-1])
            times.append(times[-1])
        array = np.stack([np.asarray(frame) for frame in frames])  # (T, H, W, 3): one stream, one frame size
        arrays.append(array)
        metadata.append(video_metadata(times, video.duration, width=array.shape[2], height=array.shape[1]))
    extra = {"return_offsets_mapping": True, "return_text_replacement_offsets": True} if offsets else {}
    return dict(
        processor(
            text=[text],
            images=[images] if images else None,
            # Nested per row: SmolVLM counts a row's videos as the length of its list (Qwen-VL flattens either way).
            videos=[arrays],
            video_metadata=metadata,
            do_sample_frames=False,
            return_tensors="pt",
            **extra,
        )
    )


def video_metadata(times: list[float], duration: float, *, width: int, height: int) -> Any:
    """Sampled frames described as a video of their own, so each processor reads their real times: frame i at
    `frames_indices[i] / fps` seconds (Qwen3-VL's time stamps, SmolVLM2's "Frame from mm:ss"), and `fps` the rate
    of the frames handed over (Qwen2.5-VL's seconds per temporal patch, its rotary time axis). The indices are
    fractional: the frames sit at their decoded times, not on a grid of this rate."""
    from transformers.video_utils import VideoMetadata

    span = times[-1] - times[0]
    # One frame, or frames at one instant: no rate to read, and none needed (nothing to space apart in time).
    fps = (len(times) - 1) / span if span > 0 else 1.0
    return VideoMetadata(
        total_num_frames=len(times),
        fps=fps,
        width=width,
        height=height,
        duration=duration or times[-1],
        video_backend="pyav",
        frames_indices=[t * fps for t in times],
    )
