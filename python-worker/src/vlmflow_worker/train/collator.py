"""Batches with loss on the assistant answers only, for every model family (families/) by one mechanism.

Labels are -100 everywhere except where the model writes an answer. Where that is comes from the chat template, not
from a search for header tokens, so it holds for any family and any text in the messages:
1. The conversation is rendered with the processor's chat template: the text the processor tokenizes.
2. For each assistant message, the messages before it are rendered with the generation prompt. That text must be a
   prefix of the full rendering (checked: a template that renders earlier turns differently once later ones follow
   is refused), and the answer starts where it ends, as the model starts writing there at inference. The answer
   ends with the family's end-of-turn token, which closes it. For SmolVLM,
   `<|im_start|>User:<image>...<end_of_utterance>\nAssistant: red<end_of_utterance>\n` labels ` red<end_of_utterance>`:
   the headers, the newline after the end of utterance, the system and user turns (an `Assistant:` typed in one
   included), the image, grid and row tokens and the padding carry no loss.
3. The processor expands each image placeholder into many tokens before tokenizing. Its replacement offsets move the
   answers' character spans onto the expanded text, and the tokenizer's offset mapping on that text picks the tokens
   inside them; each answer's last token is checked to be the end-of-turn token, so a misplaced span fails loudly.
   One template render per assistant message beyond the row's own, and per answer one vectorized pass over the row.
A row longer than max_length is an error, never cut: prep drops such rows.
Videos are encoded as Generate encodes them, from the frames Generate's sampler gave prep: for a family whose
processor takes videos (SmolVLM2, Qwen-VL) the row's `videos` go through that video input (encoding.encode_media),
whose placeholder expansions are in the replacement offsets like the images'; for Idefics3 a video is its frames as
images (the row's `video_frames`), one tile each. A row prepared for the other mode is refused, naming the row:
training must see a video as the model is served it.

With `packing`, a micro-batch is one padding-free row: the rows' real tokens back to back, `position_ids` restarting
at 0 for each, no attention mask. transformers then attends within each row only (a block-diagonal causal mask with
SDPA and eager, variable-length kernels with flash-attention), so no FLOP goes to padding and the loss is the padded
batch's (tests/test_packing.py). It needs use_cache off (with a KV cache transformers ignores packed position_ids),
as training has it. The images keep their order; Idefics3 drops the all-zero padding images itself.
Qwen2.5-VL and Qwen3-VL place tokens by multimodal rotary positions (mrope): an image or video token's position is
3-D (time, row, column of its patch), so 1-D positions would misplace them. For those the collator takes the model's
`get_rope_index` (`rope_index`), computes each row's [3, n] positions on the padded batch (the padding left out,
as the model itself does), and packs them under the 1-D per-row positions transformers reads the row boundaries
from: position_ids [4, 1, total] (modeling_qwen2_5_vl.py's "packed position_ids" case). Flat patches and grids
stay as they are: they are already per image, in row order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmflow_worker.encoding import encode_media, encode_row, tiles_images
from vlmflow_worker.errors import BadData, FailedPrecondition, WorkerError
from vlmflow_worker.families import family_of_processor
from vlmflow_worker.media import stored_video

IGNORE = -100


class AnswerOnlyCollator:
    def __init__(
        self,
        processor,
        dataset_dir: Path | str,
        max_length: int,
        packing: bool = False,
        rope_index: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        """`rope_index`: the model's `get_rope_index`, for packing a family with multimodal rotary positions."""
        self.processor = processor
        self.packing = packing
        self.rope_index = rope_index
        self.dataset_dir = Path(dataset_dir)
        self.max_length = max_length
        self.family = family_of_processor(processor)
        self.end_of_turn = self.family.end_of_turn
        self.end_of_turn_id = processor.tokenizer.convert_tokens_to_ids(self.end_of_turn)
        self.tokens_seen = 0  # real (unpadded) tokens collated so far, for tokens/s

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        for row in rows:
            self.check_video_mode(row)
        texts = [self.processor.apply_chat_template(row["messages"], tokenize=False) for row in rows]
        images = [[self._image(path) for path in row.get("images", [])] for row in rows]
        if any(row.get("videos") for row in rows) or (
            any(row.get("video_frames") for row in rows) and tiles_images(self.processor)
        ):
            # Each row on its own: the processor takes one tiling setting per call and frames are not tiled, and a
            # native video goes in with its own metadata (SmolVLM2 takes a row's photos or its video per call).
            encoded = [
                self.encode(row, text, row_images, offsets=True)
                for row, text, row_images in zip(rows, texts, images, strict=True)
            ]
            batch = pad_rows(encoded, self.processor.tokenizer)
            where = [(e["input_ids"][0], e["offset_mapping"][0], e["text_replacement_offsets"][0]) for e in encoded]
        else:
            batch = dict(
                self.processor(
                    text=texts,
                    images=images if any(images) else None,
                    padding=True,
                    return_tensors="pt",
                    return_offsets_mapping=True,
                    return_text_replacement_offsets=True,
                )
            )
            offsets = batch.pop("offset_mapping")
            expansions = batch.pop("text_replacement_offsets", None) or [[] for _ in rows]
            where = list(zip(batch["input_ids"], offsets, expansions, strict=True))
        lengths = batch["attention_mask"].sum(dim=1)
        if int(lengths.max()) > self.max_length:
            longest = int(lengths.argmax())
            raise BadData(
                f"row {rows[longest].get('id', longest)} is {int(lengths.max())} tokens (images included), over "
                f"max_length {self.max_length}; prepare the dataset with the same max_length so it is dropped"
            )
        self.tokens_seen += int(lengths.sum())
        labels = [
            self.answer_labels(row["messages"], text, *at) for row, text, at in zip(rows, texts, where, strict=True)
        ]
        batch["labels"] = pad_labels(labels, batch["input_ids"], self.processor.tokenizer.padding_side)
        return self.pack(batch, lengths) if self.packing else batch

    def pack(self, batch: dict[str, torch.Tensor], lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """The padded batch as one padding-free row (see the module doc); every row's first token is never a label
        (a BOS, or the system or user turn), so no loss crosses from one row into the next."""
        real = batch["attention_mask"].bool()
        positions = torch.cat([torch.arange(int(n)) for n in lengths])[None]
        packed = {"input_ids": batch["input_ids"][real][None], "labels": batch["labels"][real][None]}
        if "mm_token_type_ids" in batch:  # multimodal rotary positions (Qwen-VL)
            if self.rope_index is None:
                raise FailedPrecondition(
                    "training.packing with multimodal rotary positions needs the model's get_rope_index "
                    "(AnswerOnlyCollator rope_index)"
                )
            grids = {key: batch[key] for key in ("image_grid_thw", "video_grid_thw") if key in batch}
            mrope, _ = self.rope_index(
                batch["input_ids"],
                mm_token_type_ids=batch["mm_token_type_ids"],
                attention_mask=batch["attention_mask"],
                **grids,
                **({"second_per_grid_ts": batch["second_per_grid_ts"]} if "second_per_grid_ts" in batch else {}),
            )
            packed["position_ids"] = torch.cat([positions, mrope[:, real]])[:, None]  # [4, 1, total]
            packed["mm_token_type_ids"] = batch["mm_token_type_ids"][real][None]
            for key in ("pixel_values", "pixel_values_videos", "second_per_grid_ts", *grids):
                if key in batch:
                    packed[key] = batch[key]  # flat patches and per-image grids: already in row order
            return packed
        packed["position_ids"] = positions
        for key in ("pixel_values", "pixel_attention_mask"):
            if key in batch:
                images = batch[key]
                packed[key] = images.reshape(1, images.shape[0] * images.shape[1], *images.shape[2:])
        return packed

    def _image(self, path: str) -> Image.Image:
        return Image.open(self.dataset_dir / path).convert("RGB")

    def encode(self, row: dict[str, Any], text: str, images: list[Image.Image], offsets: bool) -> dict[str, Any]:
        """One row's tensors, [1, ...]: its native videos through the family's video input, else its images with the
        video frames among them one tile each (encoding.py)."""
        if row.get("videos"):
            videos = [stored_video(self.dataset_dir, video) for video in row["videos"]]
            return encode_media(self.processor, text, images, videos, offsets=offsets)
        return encode_row(self.processor, text, images, row.get("video_frames", []), offsets=offsets)

    def check_video_mode(self, row: dict[str, Any]) -> None:
        """A video row must be stored the way this model's family is served videos (prep/rows.py)."""
        name = row.get("id", "(no id)")
        if row.get("video_frames") and self.family.video == "native":
            raise BadData(
                f"row {name} holds a video as keyframe images (video_frames), but {self.family.name} is served videos "
                "through its processor's video input: prepare the dataset with model.model_id set to this model"
            )
        if row.get("videos") and self.family.video != "native":
            raise BadData(
                f"row {name} holds a video for a processor's video input (videos), but {self.family.name} is served "
                "videos as keyframes: prepare the dataset with model.model_id set to this model"
            )

    def count(self, row: dict[str, Any]) -> int:
        """The row's length in tokens (images and videos included) as this collator encodes it."""
        self.check_video_mode(row)
        text = self.processor.apply_chat_template(row["messages"], tokenize=False)
        images = [self._image(path) for path in row.get("images", [])]
        return int(self.encode(row, text, images, offsets=False)["input_ids"].shape[1])

    def answer_labels(
        self,
        messages: list[dict[str, Any]],
        text: str,
        input_ids: torch.Tensor,
        offsets: torch.Tensor,
        expansions: list[dict[str, Any]],
    ) -> torch.Tensor:
        """Labels for one sequence (the module doc's steps 2 and 3): `input_ids` where an answer is, else -100.
        `text` is the rendered conversation, `offsets` each token's (start, end) in the text the processor
        tokenized (padding: (0, 0)), `expansions` where it expanded `text`'s image placeholders."""
        starts, ends = offsets[:, 0], offsets[:, 1]
        real = ends > starts  # padding, and special tokens the tokenizer adds, cover no text
        answer = torch.zeros_like(real)
        for start, end in self.answer_spans(messages, text):
            if any(start <= e["span"][0] < end for e in expansions):
                raise BadData("an assistant message holds an image or video; answers must be text")
            start, end = expanded_position(start, expansions), expanded_position(end, expansions)
            inside = real & (ends > start) & (starts < end)
            last = int(inside.nonzero().max()) if inside.any() else -1
            if last < 0 or int(input_ids[last]) != self.end_of_turn_id:
                raise WorkerError(
                    f"an answer's tokens do not end with {self.end_of_turn}: the tokenizer's offsets disagree with "
                    "the rendered conversation"
                )
            answer |= inside
        return torch.where(answer, input_ids, IGNORE)

    def answer_spans(self, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
        """Each assistant message's answer in the rendered `text` as (start, end) characters: from the end of the
        generation prompt before it through the end-of-turn token that closes it."""
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.processor.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            if not text.startswith(prompt):
                raise FailedPrecondition(
                    "the model's chat template renders a conversation's earlier turns differently once later turns "
                    "follow, so the answers cannot be located in it; answer-only training needs a template whose "
                    "rendering of the first turns is a prefix of the whole conversation's"
                )
            start = len(prompt)
            end = text.find(self.end_of_turn, start)
            # The end of turn found must be the one closing this message (not a later turn's, nor one typed in
            # the answer): only whitespace between the message's text and it.
            if end < 0 or not text[start:end].rstrip().endswith(text_of(message).strip()):
                raise BadData(
                    f"an assistant answer is not closed by {self.end_of_turn} in the rendered conversation: "
                    f"{text[start : start + 80]!r}..."
                )
            spans.append((start, end + len(self.end_of_turn)))
        return spans


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def expanded_position(position: int, expansions: list[dict[str, Any]]) -> int:
    """A character position of the rendered text in the text the processor tokenized, where each placeholder
    (`span`) became its expansion (`new_span`)."""
    shift = 0
    for e in expansions:
        (old_start, old_end), (new_start, new_end) = e["span"], e["new_span"]
        if old_end <= position:
            shift += (new_end - new_start) - (old_end - old_start)
    return position + shift


def pad_labels(labels: list[torch.Tensor], input_ids: torch.Tensor, side: str, fill: int = IGNORE) -> torch.Tensor:
    """Each row's labels padded with -100 (or `fill`) to the batch's length, on the side the tokenizer pads the ids."""
    out = torch.full_like(input_ids, fill)
    length = input_ids.shape[1]
    for row, row_labels in enumerate(labels):
        if side == "left":
            out[row, length - len(row_labels) :] = row_labels
        else:
            out[row, : len(row_labels)] = row_labels
    return out


# Qwen-VL's visual inputs: per image or video, in row order (flat patches, grids, seconds per temporal patch).
FLAT_VISUAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def pad_rows(encoded: list[dict[str, torch.Tensor]], tokenizer) -> dict[str, torch.Tensor]:
    """Rows encoded one by one, as one batch padded the way the processor pads: token ids (and Qwen-VL's
    mm_token_type_ids) on the tokenizer's padding side; Idefics3's and SmolVLM's image stacks with all-zero tiles
    (which the model drops), frames smaller than the largest tile zero-padded under the pixel mask; Qwen-VL's flat
    patches and grids concatenated in row order."""
    batch = dict(
        tokenizer.pad(
            {key: [e[key][0].tolist() for e in encoded] for key in ("input_ids", "attention_mask")},
            padding=True,
            return_tensors="pt",
        )
    )
    if any("mm_token_type_ids" in e for e in encoded):
        types = [e["mm_token_type_ids"][0] if "mm_token_type_ids" in e else None for e in encoded]
        batch["mm_token_type_ids"] = pad_labels(
            [t if t is not None else torch.zeros_like(e["input_ids"][0]) for t, e in zip(types, encoded, strict=True)],
            batch["input_ids"],
            tokenizer.padding_side,
            fill=0,
        )
    if any(e[key].dim() != 5 for e in encoded for key in ("pixel_values", "pixel_values_videos") if key in e):
        for key in FLAT_VISUAL_KEYS:
            present = [e[key] for e in encoded if key in e]
            if present:
                batch[key] = torch.cat(present)
        return batch
    with_images = [e["pixel_values"] for e in encoded if "pixel_values" in e]
    if with_images:
        num = max(p.shape[1] for p in with_images)
        channels, height, width = (max(p.shape[d] for p in with_images) for d in (2, 3, 4))
        pixels = torch.zeros((len(encoded), num, channels, height, width), dtype=with_images[0].dtype)
        mask = torch.zeros((len(encoded), num, height, width), dtype=torch.long)
        for row, e in enumerate(encoded):
            if "pixel_values" in e:
                _, n, _, h, w = e["pixel_values"].shape
                pixels[row, :n, :, :h, :w] = e["pixel_values"][0]
                mask[row, :n, :h, :w] = e["pixel_attention_mask"][0]
        batch |= {"pixel_values": pixels, "pixel_attention_mask": mask}
    return batch
