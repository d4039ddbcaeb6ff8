"""Video frames sampled with PyAV from the real MP4 and AVI demo files; unreadable videos are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmflow_worker.errors import BadData, InvalidArgument, NotFound
from vlmflow_worker.media import sample_video

VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data"


@pytest.fixture(autouse=True)
def _needs_demo_data() -> None:
    if not VIDEOS.is_dir():
        pytest.fail(
            f"the shared demo videos are missing (a broken checkout: ../shared sits beside the clone) at {VIDEOS}"
        )


@pytest.mark.parametrize("name", ["1.mp4", "2.avi", "3.mp4"])
def test_uniform_frames_in_temporal_order(name: str) -> None:
    video = sample_video(VIDEOS / name, num_frames=6)
    assert len(video.frames) == 6 == len(video.timestamps)
    assert all(f.mode == "RGB" for f in video.frames)
    assert video.timestamps == sorted(video.timestamps)
    assert 0 <= video.timestamps[0] < video.duration / 6 + 0.5
    assert video.timestamps[-1] < video.duration
    # Spread over the whole clip, not bunched at the start.
    assert video.timestamps[-1] > video.duration * 0.7


def test_default_frame_count_and_fps_sampling() -> None:
    assert len(sample_video(VIDEOS / "1.mp4").frames) == 8
    video = sample_video(VIDEOS / "1.mp4", fps=1.0, start_seconds=2.0, end_seconds=6.0)
    assert video.timestamps == pytest.approx([2.0, 3.0, 4.0, 5.0], abs=0.05)
    capped = sample_video(VIDEOS / "1.mp4", fps=10.0, max_frames=5)
    assert len(capped.frames) == 5 and capped.timestamps[-1] > capped.duration * 0.7


def test_large_frames_are_downscaled() -> None:
    video = sample_video(VIDEOS / "1.mp4", num_frames=2, max_side=160)
    assert max(video.frames[0].size) == 160


def test_missing_file_is_not_found() -> None:
    with pytest.raises(NotFound, match=r"items\[1\]\.video: video file .* does not exist"):
        sample_video(VIDEOS / "nope.mp4", what="items[1].video")


def test_not_a_video_is_bad_data(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 definitely not a video " * 100)
    with pytest.raises(BadData, match=r"items\[0\]\.video: junk.mp4 is not a readable video"):
        sample_video(junk, what="items[0].video")


def test_unknown_codec_is_bad_data(tmp_path: Path) -> None:
    # The real AVI with its codec tag (FourCC) replaced by one no decoder knows.
    data = (VIDEOS / "2.avi").read_bytes()
    tag = data[data.index(b"strf") + 24 : data.index(b"strf") + 28]
    unknown = tmp_path / "unknown.avi"
    unknown.write_bytes(data.replace(tag, b"QQQQ"))
    with pytest.raises(BadData, match=r"items\[0\]\.video: unknown.avi .*(codec|decoded)"):
        sample_video(unknown, what="items[0].video")


def test_a_range_past_the_end_has_no_frames() -> None:
    with pytest.raises(BadData, match="no frames"):
        sample_video(VIDEOS / "3.mp4", start_seconds=60, end_seconds=70)


def test_bad_sampling_settings_are_invalid() -> None:
    with pytest.raises(InvalidArgument, match="num_frames"):
        sample_video(VIDEOS / "3.mp4", num_frames=1000)
    with pytest.raises(InvalidArgument, match="start_seconds"):
        sample_video(VIDEOS / "3.mp4", start_seconds=5, end_seconds=2)
