"""Images for the model: inline or by URI inside the roots; corrupt, truncated and bomb-sized images refused
with an error that names the item."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from vlmflow.v1 import common_pb2
from vlmflow_worker.errors import BadData, InvalidArgument, NotFound, PathOutsideRoots
from vlmflow_worker.media import load_image, open_image
from vlmflow_worker.serve.settings import WorkerSettings

DEMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "llamafactory-mllm-demo"
PHOTOS = DEMO / "mllm_demo_data"


@pytest.fixture
def settings(tmp_path: Path) -> WorkerSettings:
    if not PHOTOS.is_dir():
        pytest.fail(f"the shared demo data is missing (a broken checkout: ../shared sits beside the clone) at {DEMO}")
    return WorkerSettings(artifact_root=tmp_path, data_roots=[DEMO])


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_photos_load_by_uri_and_inline(settings: WorkerSettings) -> None:
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        by_uri = load_image(common_pb2.Image(uri=str(PHOTOS / name)), settings, "items[0].images[0]")
        inline = load_image(common_pb2.Image(data=(PHOTOS / name).read_bytes()), settings, "items[0].images[0]")
        assert by_uri.mode == "RGB" and by_uri.size == inline.size
    # file:// URIs and paths relative to a root work too.
    assert load_image(common_pb2.Image(uri=f"file://{PHOTOS / '1.jpg'}"), settings, "x").mode == "RGB"


def test_grayscale_and_alpha_become_rgb() -> None:
    assert open_image(_png((8, 8), "L"), "x").mode == "RGB"
    assert open_image(_png((8, 8), "RGBA"), "x").mode == "RGB"


def test_corrupt_bytes_are_bad_data_naming_the_item(settings: WorkerSettings) -> None:
    with pytest.raises(BadData, match=r"items\[2\]\.images\[1\]: not an image"):
        load_image(common_pb2.Image(data=b"this is not an image"), settings, "items[2].images[1]")


def test_truncated_image_is_bad_data(settings: WorkerSettings) -> None:
    data = (PHOTOS / "1.jpg").read_bytes()
    with pytest.raises(BadData, match=r"items\[0\]\.images\[0\]: the image is corrupt or truncated"):
        load_image(common_pb2.Image(data=data[: len(data) // 2]), settings, "items[0].images[0]")


def test_decompression_bomb_is_refused_before_decoding(settings: WorkerSettings) -> None:
    bomb = _png((12_000, 12_000), "1")  # 144 Mpx in a few hundred KB
    assert len(bomb) < 1_000_000
    with pytest.raises(BadData, match="decompression-bomb guard"):
        load_image(common_pb2.Image(data=bomb), settings, "items[0].images[0]")


def test_missing_empty_and_outside_uris(settings: WorkerSettings, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"items\[0\]\.images\[0\]\.uri: image file"):
        load_image(common_pb2.Image(uri=str(PHOTOS / "missing.jpg")), settings, "items[0].images[0]")
    with pytest.raises(PathOutsideRoots, match="outside the allowed roots"):
        load_image(common_pb2.Image(uri="/etc/hostname"), settings, "items[0].images[0]")
    with pytest.raises(InvalidArgument, match="empty"):
        load_image(common_pb2.Image(data=b""), settings, "items[0].images[0]")
    with pytest.raises(InvalidArgument, match="data .bytes. or uri"):
        load_image(common_pb2.Image(), settings, "items[0].images[0]")
