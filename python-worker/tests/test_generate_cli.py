"""The people CLI: images and a video from the shell, one line per answer; errors as one line and exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmflow_worker.infer.cli import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo" / "mllm_demo_data"


@pytest.fixture(autouse=True)
def _needs_demo_data() -> None:
    if not DATA.is_dir():
        pytest.fail(f"the shared demo data is missing (a broken checkout: ../shared sits beside the clone) at {DATA}")


def test_one_answer_per_image_for_a_caption_batch(tiny_model_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--model", str(tiny_model_path), "--task", "caption", "--max-new-tokens", "3"]
    assert main([*argv, "--image", str(DATA / "1.jpg"), "--image", str(DATA / "2.jpg")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0] for line in lines] == [f"[{DATA / '1.jpg'}", f"[{DATA / '2.jpg'}"]


def test_video_answer_as_json_with_frame_times(tiny_model_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--model", str(tiny_model_path), "--video", str(DATA / "3.mp4"), "--num-frames", "3", "--json"]
    assert main([*argv, "--prompt", "What's in the video?", "--max-new-tokens", "3"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert len(response["results"][0]["frame_timestamps"]) == 3
    assert response["timings"]["generate_seconds"] > 0


def test_errors_are_one_line_and_exit_1(tiny_model_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", str(tiny_model_path), "--task", "vqa", "--image", str(DATA / "1.jpg")]) == 1
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["--model", str(tiny_model_path), "--image", str(DATA / "nope.jpg")]) == 2
