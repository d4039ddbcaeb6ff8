"""How a row's text and images become the model's inputs, one way for Generate, prep's token counts and the
training collator, so the model trains on exactly what it is served: video frames are shown whole, one tile each;
photos keep the processor's tiling."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from PIL import Image

from vlmflow_worker.errors import BadData


def frame_image_kwargs(frames: bool) -> dict[str, Any]:
    """The processor settings for one item's images. Video frames are shown whole, one tile each (as SmolVLM does:
    many frames already cost many tokens); photos keep the processor's tiling. Generate, prep's token counts and the
    training collator all encode frames with this, so the model trains on the frames it is served."""
    return {"do_image_splitting": False} if frames else {}


def encode_row(
    processor, text: str, images: list[Image.Image], frames: Collection[int], *, offsets: bool = False
) -> dict[str, Any]:
    """One rendered row's tensors ([1, ...]), its images encoded as Generate encodes them: the images at indices
    `frames` are video frames, one tile each (infer.prompts.frame_image_kwargs), the others photos, tiled. Prep counts
    tokens with this too, so its counts are the training lengths.

    With `offsets`, also where each token lies in the text the processor tokenized (`offset_mapping`, [1, n, 2]) and
    where that text differs from `text`: each image placeholder and its expansion (`text_replacement_offsets`, as
    transformers' processors return it: one list per row of {"span", "new_span"}). The collator's answer labels are
    read from them."""
    extra = {"return_offsets_mapping": True, "return_text_replacement_offsets": True} if offsets else {}
    if not images:
        return dict(processor(text=[text], return_tensors="pt", **extra))
    kinds = {i in frames for i in range(len(images))}
    if len(kinds) == 1:
        kwargs = frame_image_kwargs(kinds.pop())
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
        kwargs = frame_image_kwargs(i in frames)
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
