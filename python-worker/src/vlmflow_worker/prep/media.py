"""Images and video frames: resolved inside the allowed roots, decoded to prove they are readable, and stored
content-addressed (`images/<sha256 prefix>.<ext>`) so an image used by many rows is stored once."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vlmflow_worker.errors import PathOutsideRoots, WorkerError
from vlmflow_worker.media import open_image, sample_video
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri


@dataclass
class StoredVideo:
    """A video's sampled frames as stored images (relative path, image), with their times for the prompt."""

    frames: list[tuple[str, Image.Image]]
    timestamps: list[float]
    duration: float


class Drop(Exception):
    """A row is dropped; `reason` is one of the stats report's drop reasons."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MediaStore:
    def __init__(self, out_dir: Path, settings: WorkerSettings) -> None:
        self.folder = out_dir / "images"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.sizes: list[tuple[int, int]] = []

    def _path(self, ref: str, base: Path | None) -> Path:
        raw = Path(ref)
        if not raw.is_absolute() and base is not None:
            raw = base / raw
        try:
            path = resolve_uri(str(raw), self.settings, "image")
        except PathOutsideRoots as err:
            raise Drop("image_outside_roots", err.message) from err
        except WorkerError as err:
            raise Drop("missing_image", err.message) from err
        if not path.is_file():
            raise Drop("missing_image", f"{ref!r} does not exist")
        return path

    def add_image(self, ref: Any, base: Path | None) -> tuple[str, Image.Image]:
        """Stores one image (a path, {"bytes", "path"}, raw bytes or a PIL image); returns (relative path, image)."""
        if isinstance(ref, Image.Image):
            buffer = io.BytesIO()
            ref.convert("RGB").save(buffer, format="PNG")
            data, suffix, name = buffer.getvalue(), ".png", "<inline image>"
        elif isinstance(ref, dict) and ref.get("bytes"):
            data, name = ref["bytes"], str(ref.get("path") or "<inline image>")
            suffix = Path(name).suffix.lower() or ".png"
        elif isinstance(ref, bytes):
            data, suffix, name = ref, ".png", "<inline image>"
        elif isinstance(ref, dict | str) and (path_ref := ref.get("path") if isinstance(ref, dict) else ref):
            path = self._path(path_ref, base)
            data, suffix, name = path.read_bytes(), path.suffix.lower(), path_ref
        else:
            raise Drop("missing_image", f"image reference {str(ref)[:80]!r} is empty or of an unknown kind")
        try:
            # The same decoder as Generate, with its decompression-bomb guard (PIL alone only warns up to 178 Mpx).
            image = open_image(data, repr(name))
        except WorkerError as err:
            raise Drop("corrupt_image", err.message) from err
        return self._store(data, suffix), image

    def add_video(self, ref: str, base: Path | None) -> StoredVideo:
        """Samples the frames Generate would show for this video (media.sample_video with its defaults: the same
        frame count, times and downscaling) and stores each as a PNG image. The sampler decodes up to the last
        sampled frame and keeps only the sampled ones, so prep never holds a whole video in memory."""
        path = self._path(ref, base)
        try:
            video = sample_video(path, what=f"video {ref!r}")
        except WorkerError as err:
            raise Drop("corrupt_image", err.message) from err
        except Exception as err:  # whatever else a damaged file makes FFmpeg raise drops the row, never the job
            raise Drop("corrupt_image", f"video {ref!r} cannot be decoded ({type(err).__name__}: {err})") from err
        stored = []
        for frame in video.frames:
            buffer = io.BytesIO()
            frame.save(buffer, format="PNG")
            stored.append((self._store(buffer.getvalue(), ".png"), frame))
        return StoredVideo(stored, video.timestamps, video.duration)

    def _store(self, data: bytes, suffix: str) -> str:
        suffix = suffix if suffix in {".png", ".jpg", ".jpeg", ".webp"} else ".png"
        name = f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
        target = self.folder / name
        if not target.exists():
            target.write_bytes(data)
        return f"images/{name}"
