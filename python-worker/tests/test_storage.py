"""Paths are confined to the artifact root and data roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmflow_worker.errors import InvalidArgument, PathOutsideRoots
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri


@pytest.fixture
def settings(tmp_path: Path) -> WorkerSettings:
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "data").mkdir()
    return WorkerSettings(artifact_root=tmp_path / "artifacts", data_roots=[tmp_path / "data"], port=0)


def test_relative_paths_resolve_under_the_artifact_root(settings: WorkerSettings) -> None:
    assert resolve_uri("runs/a/x.png", settings) == settings.artifact_root / "runs/a/x.png"


def test_data_roots_and_file_uris_are_allowed(settings: WorkerSettings) -> None:
    target = settings.data_roots[0] / "img.jpg"
    assert resolve_uri(str(target), settings) == target
    assert resolve_uri(f"file://{target}", settings) == target


@pytest.mark.parametrize("uri", ["../../etc/passwd", "/etc/passwd", "runs/../../../etc/passwd"])
def test_escapes_are_refused_with_the_roots_named(settings: WorkerSettings, uri: str) -> None:
    with pytest.raises(PathOutsideRoots, match="outside the allowed roots"):
        resolve_uri(uri, settings, what="dataset")


def test_symlink_out_of_a_root_is_refused(settings: WorkerSettings, tmp_path: Path) -> None:
    (settings.data_roots[0] / "link").symlink_to("/etc")
    with pytest.raises(PathOutsideRoots):
        resolve_uri(str(settings.data_roots[0] / "link" / "passwd"), settings)


def test_unknown_schemes_and_empty_paths_are_named(settings: WorkerSettings) -> None:
    with pytest.raises(InvalidArgument, match="s3:// scheme"):
        resolve_uri("s3://bucket/x", settings)
    with pytest.raises(InvalidArgument, match="image is empty"):
        resolve_uri("", settings, what="image")
