"""Idefics3 batches with loss on the assistant answers only.

SmolVLM's chat template renders
`<|im_start|>User:<image>...<end_of_utterance>\\nAssistant: answer<end_of_utterance>\\n`.
Labels are -100 everywhere except, for each assistant turn, the tokens after its `Assistant:` header up to and
including the `<end_of_utterance>` that closes it. So the system and user turns, the headers, the image, grid and
row tokens and the padding carry no loss. A row longer than max_length is an error, never cut: prep drops such rows.
Video frames (the row's `video_frames`, from prep) are encoded as Generate encodes them, one tile each.

With `packing`, a micro-batch is one padding-free row: the rows' real tokens back to back, `position_ids` restarting
at 0 for each, no attention mask. transformers then attends within each row only (a block-diagonal causal mask with
SDPA and eager, variable-length kernels with flash-attention), so no FLOP goes to padding and the loss is the padded
batch's (tests/test_packing.py). It needs use_cache off (with a KV cache transformers ignores packed position_ids),
as training has it. The images keep their order; Idefics3 drops the all-zero padding images itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmflow_worker.encoding import encode_row
from vlmflow_worker.errors import BadData

IGNORE = -100


class AnswerOnlyCollator:
    def __init__(self, processor, dataset_dir: Path | str, max_length: int, packing: bool = False) -> None:
        self.processor = processor
        self.packing = packing
        self.dataset_dir = Path(dataset_dir)
        self.max_length = max_length
        tokenizer = processor.tokenizer
        self.end_of_utterance = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
        self.newline = tokenizer.encode("\n", add_special_tokens=False)
        self.header = tokenizer.encode("Assistant:", add_special_tokens=False)
        self.bos = tokenizer.bos_token_id
        self.tokens_seen = 0  # real (unpadded) tokens collated so far, for tokens/s

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [self.processor.apply_chat_template(row["messages"], tokenize=False) for row in rows]
        images = [[self._image(path) for path in row.get("images", [])] for row in rows]
        if any(row.get("video_frames") for row in rows):
            # The processor takes one tiling setting per call and frames are not tiled: each row on its own.
            frames = [row.get("video_frames", []) for row in rows]
            encoded = [encode_row(self.processor, *row) for row in zip(texts, images, frames, strict=True)]
            batch = pad_rows(encoded, self.processor.tokenizer)
        else:
            batch = self.processor(
                text=texts, images=images if any(images) else None, padding=True, return_tensors="pt"
            )
        lengths = batch["attention_mask"].sum(dim=1)
        if int(lengths.max()) > self.max_length:
            longest = int(lengths.argmax())
            raise BadData(
                f"row {rows[longest].get('id', longest)} is {int(lengths.max())} tokens (images included), over "
                f"max_length {self.max_length}; prepare the dataset with the same max_length so it is dropped"
            )
        self.tokens_seen += int(lengths.sum())
        batch["labels"] = torch.stack([self.answer_labels(ids) for ids in batch["input_ids"]])
        return self.pack(dict(batch), lengths) if self.packing else dict(batch)

    @staticmethod
    def pack(batch: dict[str, torch.Tensor], lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """The padded batch as one padding-free row (see the module doc); the labels' first token of every row is
        the BOS, never a label, so no loss crosses from one row into the next."""
        real = batch["attention_mask"].bool()
        packed = {
            "input_ids": batch["input_ids"][real][None],
            "labels": batch["labels"][real][None],
            "position_ids": torch.cat([torch.arange(int(n)) for n in lengths])[None],
        }
        for key in ("pixel_values", "pixel_attention_mask"):
            if key in batch:
                images = batch[key]
                packed[key] = images.reshape(1, images.shape[0] * images.shape[1], *images.shape[2:])
        return packed

    def _image(self, path: str) -> Image.Image:
        return Image.open(self.dataset_dir / path).convert("RGB")

    def count(self, row: dict[str, Any]) -> int:
        """The row's length in tokens (images included) as this collator encodes it."""
        text = self.processor.apply_chat_template(row["messages"], tokenize=False)
        images = [self._image(path) for path in row.get("images", [])]
        return int(encode_row(self.processor, text, images, row.get("video_frames", []))["input_ids"].shape[1])

    def answer_labels(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Labels for one sequence: the ids inside assistant answers (with their end-of-utterance), else -100."""
        ids = input_ids.tolist()
        labels = [IGNORE] * len(ids)
        n = len(self.header)
        start = 0
        while (at := _find(ids, self.header, start)) >= 0:
            start = at + n
            if not self._is_turn_start(ids, at):
                continue  # "Assistant:" inside some text, not a header
            end = start
            while end < len(ids) and ids[end] != self.end_of_utterance:
                end += 1
            if end == len(ids):
                raise BadData("an assistant answer has no <end_of_utterance>: was the sequence truncated?")
            labels[start : end + 1] = ids[start : end + 1]
            start = end + 1
        return torch.tensor(labels, dtype=input_ids.dtype)

    def _is_turn_start(self, ids: list[int], at: int) -> bool:
        """A header follows the BOS or `<end_of_utterance>` + newline."""
        if at > 0 and ids[at - 1] == self.bos:
            return True
        k = len(self.newline)
        return at >= k + 1 and ids[at - k : at] == self.newline and ids[at - k - 1] == self.end_of_utterance


def _find(ids: list[int], pattern: list[int], start: int) -> int:
    first, n = pattern[0], len(pattern)
    for i in range(start, len(ids) - n + 1):
        if ids[i] == first and ids[i : i + n] == pattern:
            return i
    return -1


def pad_rows(encoded: list[dict[str, torch.Tensor]], tokenizer) -> dict[str, torch.Tensor]:
    """Rows encoded one by one, as one batch padded the way the processor pads: token ids on the tokenizer's padding
    side, image stacks with all-zero tiles (which Idefics3 drops)."""
    batch = dict(
        tokenizer.pad(
            {key: [e[key][0].tolist() for e in encoded] for key in ("input_ids", "attention_mask")},
            padding=True,
            return_tensors="pt",
        )
    )
    with_images = [e["pixel_values"] for e in encoded if "pixel_values" in e]
    if with_images:
        _, _, channels, height, width = with_images[0].shape
        num = max(p.shape[1] for p in with_images)
        pixels = torch.zeros((len(encoded), num, channels, height, width), dtype=with_images[0].dtype)
        mask = torch.zeros((len(encoded), num, height, width), dtype=torch.long)
        for row, e in enumerate(encoded):
            if "pixel_values" in e:
                n = e["pixel_values"].shape[1]
                pixels[row, :n] = e["pixel_values"][0]
                mask[row, :n] = e["pixel_attention_mask"][0]
        batch |= {"pixel_values": pixels, "pixel_attention_mask": mask}
    return batch
