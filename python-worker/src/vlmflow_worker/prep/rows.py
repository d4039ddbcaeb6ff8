"""One raw record of any layout -> a normalized row, or a Drop with its reason.

Normalized rows use TRL's conversational layout, with media paths relative to the dataset folder:
- SFT rows: {"messages": [{"role", "content": [{"type": "image"} | {"type": "text", "text"}]}], "images": [...]}
  plus "answers" (all reference answers) for VQA rows. A video is stored as Generate shows it to the model's family:
  for a family whose processor takes videos (SmolVLM2, Qwen-VL) a {"type": "video"} part where the video was, and
  "videos": [{"frames": [paths], "timestamps": [seconds], "duration": seconds}] (its sampled frames, in marker order);
  otherwise (Idefics3, or prep without a model) its frames as images introduced by their times (video_parts), and
  "video_frames" (the indices into "images" of those frames, each one tile as Generate shows it);
- preference rows: {"prompt": [messages], "chosen": [assistant message], "rejected": [...], "images": [...]}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.infer.prompts import video_parts
from vlmflow_worker.media import VideoFrames
from vlmflow_worker.prep.media import Drop, MediaStore

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant"}
ROLES["system"] = "system"
MARKER = re.compile(r"(<image>|<video>)")


@dataclass
class Row:
    kind: str  # "sft" or "preference"
    data: dict[str, Any]
    images: list[Image.Image] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # which of `images` are video frames (one tile each)
    videos: list[VideoFrames] = field(default_factory=list)  # native videos ("videos"), in marker order


def detect_layout(record: dict[str, Any]) -> int:
    if "chosen" in record and "rejected" in record:
        return jobs_pb2.DATASET_LAYOUT_PREFERENCE
    turns = record.get("messages") or record.get("conversations")
    if isinstance(turns, list) and turns:
        first = turns[0] if isinstance(turns[0], dict) else {}
        if isinstance(first.get("content"), list):
            return jobs_pb2.DATASET_LAYOUT_MESSAGES
        return jobs_pb2.DATASET_LAYOUT_SHAREGPT
    if "question" in record or "query" in record:
        return jobs_pb2.DATASET_LAYOUT_VQA
    raise Drop("malformed_row", f"cannot tell the layout from the keys {sorted(record)[:8]}")


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


class Normalizer:
    """Turns records into rows, storing their media in `media`; `base` resolves relative media paths.
    `native_video`: the model's processor takes videos (its family's video mode), so videos stay videos."""

    def __init__(self, media: MediaStore, native_video: bool = False) -> None:
        self.media = media
        self.native_video = native_video

    def row(self, record: dict[str, Any], layout: int, base: Path | None, columns: dict[str, str]) -> Row:
        if not isinstance(record, dict):  # a JSON line holding a list or a number (issue 7's corpus)
            raise Drop("malformed_row", f"a row is a JSON {type(record).__name__}, not an object")
        if "__malformed__" in record:
            raise Drop("malformed_row", record["__malformed__"])
        record = {columns.get(k, k): v for k, v in record.items()}
        if layout in (jobs_pb2.DATASET_LAYOUT_UNSPECIFIED, jobs_pb2.DATASET_LAYOUT_AUTO):
            layout = detect_layout(record)
        if layout == jobs_pb2.DATASET_LAYOUT_PREFERENCE:
            return self._preference(record, base)
        if layout in (jobs_pb2.DATASET_LAYOUT_VQA, jobs_pb2.DATASET_LAYOUT_IMAGE_FOLDER):
            return self._vqa(record, base)
        return self._conversation(record, base)

    # ---- layouts ----

    def _conversation(self, record: dict[str, Any], base: Path | None) -> Row:
        turns = record.get("messages") or record.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise Drop("malformed_row", "no `messages` or `conversations` list")
        images = _as_list(record.get("images") or record.get("image"))
        videos = _as_list(record.get("videos") or record.get("video"))
        messages: list[dict[str, Any]] = []
        if isinstance(record.get("system"), str) and record["system"]:
            messages.append({"role": "system", "content": [_text(record["system"])]})
        parts_by_turn = []
        for turn in turns:
            if not isinstance(turn, dict):
                raise Drop("malformed_row", "a turn is not an object")
            role = ROLES.get(str(turn.get("role") or turn.get("from") or "").lower())
            if role is None:
                raise Drop("malformed_row", f"unknown role {turn.get('role') or turn.get('from')!r}")
            parts_by_turn.append((role, _parts(turn.get("content", turn.get("value")))))
        markers = [p["type"] for _, parts in parts_by_turn for p in parts if p["type"] in ("image", "video")]
        if markers.count("image") != len(images) or markers.count("video") != len(videos):
            raise Drop(
                "marker_mismatch",
                f"{markers.count('image')} image and {markers.count('video')} video markers for "
                f"{len(images)} images and {len(videos)} videos",
            )
        stored: list[str] = []
        loaded: list[Image.Image] = []
        frames: list[int] = []  # indices into `stored` of the images that are video frames
        native: list[dict[str, Any]] = []  # native videos as stored ("videos")
        sampled: list[VideoFrames] = []
        image_iter, video_iter = iter(images), iter(videos)
        for role, parts in parts_by_turn:
            content = []
            for part in parts:
                if part["type"] == "text":
                    if part["text"]:
                        content.append(part)
                    continue
                if part["type"] == "image":
                    path, image = self.media.add_image(next(image_iter), base)
                    content.append({"type": "image"})
                    stored.append(path)
                    loaded.append(image)
                    continue
                video = self.media.add_video(next(video_iter), base)
                if self.native_video:
                    # The family's processor takes the video (encoding.encode_media), as Generate gives it.
                    content.append({"type": "video"})
                    paths = [path for path, _ in video.frames]
                    native.append({"frames": paths, "timestamps": video.timestamps, "duration": video.duration})
                    sampled.append(VideoFrames([image for _, image in video.frames], video.timestamps, video.duration))
                    continue
                # Otherwise a video is shown as Generate shows it: its sampled frames, each introduced by its time, one
                # tile per frame; `video_frames` marks which images are frames so the collator encodes them that way.
                content.extend(video_parts(video.timestamps, video.duration))
                for path, image in video.frames:
                    frames.append(len(stored))
                    stored.append(path)
                    loaded.append(image)
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" and _has_text(m) for m in messages):
            raise Drop("no_assistant_turn", "the conversation has no assistant answer to learn from")
        data: dict[str, Any] = {"messages": messages, "images": stored}
        if frames:
            data["video_frames"] = frames
        if native:
            data["videos"] = native
        return Row("sft", data, loaded, frames, sampled)

    def _vqa(self, record: dict[str, Any], base: Path | None) -> Row:
        question = record.get("question") or record.get("query")
        answers = _as_list(record.get("answers") if record.get("answers") is not None else record.get("answer"))
        answers = [str(a) for a in answers if str(a).strip()]
        if not answers:
            raise Drop("no_assistant_turn", "the row has no answer")
        if not isinstance(question, str) or not question.strip():
            raise Drop("malformed_row", "the row has no question")
        images = _as_list(record.get("images") if record.get("images") is not None else record.get("image"))
        if not images:
            raise Drop("missing_image", "the row has no image")
        stored = [self.media.add_image(ref, base) for ref in images]
        user = {"role": "user", "content": [{"type": "image"} for _ in stored] + [_text(question)]}
        assistant = {"role": "assistant", "content": [_text(answers[0])]}
        data = {"messages": [user, assistant], "images": [p for p, _ in stored], "answers": answers}
        return Row("sft", data, [image for _, image in stored])

    def _preference(self, record: dict[str, Any], base: Path | None) -> Row:
        images = _as_list(record.get("images") if record.get("images") is not None else record.get("image"))
        prompt = record.get("prompt") or record.get("question")
        if isinstance(prompt, str):
            parts = _parts(prompt)
            if not any(p["type"] == "image" for p in parts):
                parts = [{"type": "image"} for _ in images] + parts
            prompt = [{"role": "user", "content": parts}]
        if not isinstance(prompt, list) or not prompt:
            raise Drop("malformed_row", "the row has no prompt")
        prompt = [
            {"role": ROLES.get(m.get("role", "user"), "user"), "content": _parts(m.get("content"))} for m in prompt
        ]
        markers = sum(p["type"] == "image" for m in prompt for p in m["content"])
        if markers != len(images):
            raise Drop("marker_mismatch", f"{markers} image markers for {len(images)} images")
        stored = [self.media.add_image(ref, base) for ref in images]
        answers = {}
        for key in ("chosen", "rejected"):
            value = record.get(key)
            text = value if isinstance(value, str) else _answer_text(value)
            if not text or not text.strip():
                raise Drop("no_assistant_turn", f"the row has no {key} answer")
            answers[key] = [{"role": "assistant", "content": [_text(text)]}]
        data = {"prompt": prompt, **answers, "images": [p for p, _ in stored]}
        return Row("preference", data, [image for _, image in stored])


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _parts(content: Any) -> list[dict[str, Any]]:
    """Typed parts from a string with <image>/<video> markers, or from a list of typed parts."""
    if content is None:
        return []
    if isinstance(content, str):
        parts = []
        for piece in MARKER.split(content):
            if piece in ("<image>", "<video>"):
                parts.append({"type": piece[1:-1]})
            elif piece:
                parts.append(_text(piece))
        return parts
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.extend(_parts(part.get("text") or ""))
            elif kind in ("image", "video"):
                parts.append({"type": kind})
            else:
                raise Drop("malformed_row", f"a content part of unknown type {kind!r}")
        return parts
    raise Drop("malformed_row", f"content of type {type(content).__name__}")


def _has_text(message: dict[str, Any]) -> bool:
    return any(p["type"] == "text" and p["text"].strip() for p in message["content"])


def _answer_text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(p.get("text", "") for m in value if isinstance(m, dict) for p in _parts(m.get("content")))
    return ""


__all__ = ["Drop", "Normalizer", "Row", "detect_layout"]
