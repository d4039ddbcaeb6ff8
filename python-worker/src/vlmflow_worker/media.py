"""Images and video frames for the model: decoded, checked and converted to RGB, with errors that name the item.

- Images come inline (bytes) or by URI, confined to the worker's roots (storage.resolve_uri).
- A decompression-bomb guard refuses images over MAX_IMAGE_PIXELS before decoding them.
- Corrupt or truncated images are BadData; missing files are NotFound.
- Videos are sampled with PyAV: N frames uniformly over [start, end), or at a given fps capped by max_frames;
  each frame comes back as RGB with its timestamp in seconds.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from vlmflow_worker.errors import BadData, InvalidArgument, NotFound
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri

# 8K x 8K. A bigger image is almost certainly a decompression bomb (a few KB of PNG that inflates to GBs).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
DEFAULT_NUM_FRAMES = 8
MAX_NUM_FRAMES = 64
# Frames are downscaled right after decoding so a 4K video does not hold GBs of RGB frames; the processor resizes
# them again to the model's tile size.
MAX_FRAME_SIDE = 1024

# Never decode a truncated file as if it were whole.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_image(data: bytes | Path, what: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decodes an image into RGB. `what` names the item in errors ("items[2].images[0]")."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    if isinstance(data, bytes) and not data:
        raise InvalidArgument(f"{what}: the image data is empty")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit; ours is lower and raises, so the warning is only noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadData(
                    f"{what}: the image is {width}x{height} pixels, over the limit of {max_pixels} pixels "
                    "(decompression-bomb guard); downscale it before sending"
                )
            image.load()
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadData(f"{what}: the image is too large to decode safely (decompression-bomb guard): {err}") from err
    except UnidentifiedImageError as err:
        raise BadData(f"{what}: not an image in a known format (corrupt or not an image file)") from err
    except FileNotFoundError as err:
        raise NotFound(f"{what}: image file {str(data)!r} does not exist") from err
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated and damaged data as OSError ("image file is truncated", "broken data stream").
        raise BadData(f"{what}: the image is corrupt or truncated ({err})") from err


def load_image(image, settings: WorkerSettings, what: str) -> Image.Image:
    """An image from a vlmflow.v1.Image: inline bytes, or a URI confined to the worker's roots."""
    source = image.WhichOneof("source")
    if source == "data":
        return open_image(bytes(image.data), what)
    if source == "uri":
        path = resolve_uri(image.uri, settings, what=f"{what}.uri")
        if not path.is_file():
            raise NotFound(f"{what}.uri: image file {image.uri!r} does not exist")
        return open_image(path, what)
    raise InvalidArgument(f"{what}: give the image as data (bytes) or uri")


@dataclass
class VideoFrames:
    frames: list[Image.Image]
    timestamps: list[float]
    # Seconds; 0 when the container does not say.
    duration: float


def stored_video(folder: Path, video: dict) -> VideoFrames:
    """A video as prep stores it in a row's "videos" (its sampled frames as lossless PNGs, their times and the
    video's duration), back as the frames Generate's sampler gave: training and evaluation encode exactly these."""
    frames = [Image.open(folder / path).convert("RGB") for path in video["frames"]]
    return VideoFrames(frames, [float(t) for t in video["timestamps"]], float(video.get("duration") or 0.0))


def _target_times(start: float, end: float, num_frames: int, fps: float, max_frames: int) -> list[float]:
    """The timestamps to sample: uniform (frame centres of N equal slices), or every 1/fps seconds."""
    span = end - start
    if fps > 0:
        count = max(1, math.floor(span * fps + 1e-9))
        if count > max_frames:
            # Capped: spread max_frames uniformly instead of keeping only the first ones.
            return [start + span * (i + 0.5) / max_frames for i in range(max_frames)]
        return [start + i / fps for i in range(count)]
    return [start + span * (i + 0.5) / num_frames for i in range(num_frames)]


def sample_video(
    path: Path,
    what: str = "video",
    num_frames: int = 0,
    fps: float = 0.0,
    max_frames: int = 0,
    start_seconds: float = 0.0,
    end_seconds: float = 0.0,
    max_side: int = MAX_FRAME_SIDE,
) -> VideoFrames:
    """Samples RGB frames in temporal order from a video file (MP4, AVI, ... whatever FFmpeg decodes)."""
    import av

    num_frames = num_frames or DEFAULT_NUM_FRAMES
    max_frames = max_frames or MAX_NUM_FRAMES
    if num_frames < 0 or num_frames > MAX_NUM_FRAMES:
        raise InvalidArgument(f"{what}.num_frames must be between 1 and {MAX_NUM_FRAMES}, got {num_frames}")
    if fps < 0 or max_frames < 0 or max_frames > MAX_NUM_FRAMES:
        raise InvalidArgument(f"{what}: fps must be >= 0 and max_frames between 1 and {MAX_NUM_FRAMES}")
    if start_seconds < 0 or end_seconds < 0 or (end_seconds and end_seconds <= start_seconds):
        raise InvalidArgument(f"{what}: need 0 <= start_seconds < end_seconds (end 0 = end of video)")
    if not path.is_file():
        raise NotFound(f"{what}: video file {str(path)!r} does not exist")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise BadData(f"{what}: {path.name} is not a readable video ({err})") from err
    with container:
        if not container.streams.video:
            raise BadData(f"{what}: {path.name} has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context is not None else ""
        if not codec or codec == "none":
            raise BadData(f"{what}: {path.name} uses a video codec this worker cannot decode")
        duration = _duration(container, stream)
        end = end_seconds or duration
        if not end:
            raise BadData(f"{what}: {path.name} does not say how long it is; give end_seconds")
        targets = _target_times(start_seconds, end, num_frames, fps, max_frames)
        frames, times = _decode_at(container, stream, targets, end, what, path.name, max_side)
    if not frames:
        raise BadData(f"{what}: no frames could be decoded from {path.name} in [{start_seconds}, {end}) seconds")
    return VideoFrames(frames, times, duration)


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    if stream.frames and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    return 0.0


def _decode_at(container, stream, targets: list[float], end: float, what: str, name: str, max_side: int):
    """One pass over the stream: for each target time, the first frame at or after it."""
    import av

    frames: list[Image.Image] = []
    times: list[float] = []
    index = 0
    if targets[0] > 1.0:
        # Jump near the first target (to the keyframe before it) instead of decoding from the start.
        container.seek(int(targets[0] / stream.time_base), stream=stream, backward=True, any_frame=False)
    try:
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else 0.0
            if t >= end:
                break
            while index < len(targets) and t + 1e-6 >= targets[index]:
                image = frame.to_image()
                image.thumbnail((max_side, max_side))
                frames.append(image)
                times.append(round(t, 4))
                # Several targets between two frames share that frame once.
                while index < len(targets) and t + 1e-6 >= targets[index]:
                    index += 1
            if index == len(targets):
                break
    except av.error.FFmpegError as err:
        if not frames:
            raise BadData(f"{what}: {name} could not be decoded ({err})") from err
    return frames, times
