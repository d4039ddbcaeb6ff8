"""Sources -> raw records. Each record keeps the folder its relative media paths resolve against."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import BadData, NotFound
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
CAPTION_FILES = ("metadata.jsonl", "captions.jsonl", "captions.csv", "metadata.csv")
HUB_ID = re.compile(r"^(hf://)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Source:
    """A resolved DatasetSource: a local path, or a hub id."""

    index: int
    spec: jobs_pb2.DatasetSource
    path: Path | None
    hub_id: str = ""

    @property
    def base(self) -> Path:
        """Relative image paths resolve against the data file's folder (LLaMA-Factory's dataset_dir)."""
        assert self.path is not None
        return self.path if self.path.is_dir() else self.path.parent


def resolve_source(index: int, spec: jobs_pb2.DatasetSource, settings: WorkerSettings) -> Source:
    """A local path inside the allowed roots, or a hub id (`owner/name`, `hf://owner/name`) when no such local path
    exists. Raises PathOutsideRoots naming `sources[i].uri`."""
    what = f"sources[{index}].uri"
    uri = spec.uri
    if HUB_ID.match(uri) and (uri.startswith("hf://") or not (settings.artifact_root / uri).exists()):
        return Source(index, spec, None, hub_id=uri.removeprefix("hf://"))
    return Source(index, spec, resolve_uri(uri, settings, what))


def fingerprint_source(source: Source) -> str:
    """Content of data files; name, size and mtime of the files in a folder (images are many and large)."""
    digest = hashlib.sha256()
    if source.path is None:
        digest.update(f"hub:{source.hub_id}:{source.spec.subset}:{source.spec.split}".encode())
    elif source.path.is_file():
        digest.update(source.path.read_bytes())
    elif source.path.is_dir():
        for file in sorted(p for p in source.path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(source.path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_records(source: Source) -> Iterator[dict[str, Any]]:
    if source.path is None:
        yield from _read_hub(source)
        return
    path = source.path
    if not path.exists():
        raise NotFound(f"sources[{source.index}].uri {source.spec.uri!r} does not exist")
    if path.is_dir():
        yield from _read_image_folder(source)
        return
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        yield {"__malformed__": f"line {number}: {err}"}
        elif suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):  # {"data": [...]} or a single split
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            yield from data
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
        else:
            raise BadData(
                f"sources[{source.index}].uri {source.spec.uri!r}: unsupported file type {suffix!r}; "
                "use .json, .jsonl, .parquet or a folder of images with a captions file"
            )
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadData(f"sources[{source.index}].uri {source.spec.uri!r} is not valid JSON: {err}") from err


def _read_image_folder(source: Source) -> Iterator[dict[str, Any]]:
    """A folder of images with `metadata.jsonl` / `captions.jsonl` ({"file_name", "text" or "caption"}) or a CSV
    with the same columns; the Hugging Face imagefolder convention."""
    folder = source.base
    captions = next((folder / name for name in CAPTION_FILES if (folder / name).is_file()), None)
    if captions is None:
        raise BadData(
            f"sources[{source.index}].uri {source.spec.uri!r} is a folder without a captions file; "
            f"add one of {', '.join(CAPTION_FILES)} with columns file_name and text"
        )
    if captions.suffix == ".jsonl":
        entries = [json.loads(line) for line in captions.read_text().splitlines() if line.strip()]
    else:
        with open(captions, newline="") as f:
            entries = list(csv.DictReader(f))
    for entry in entries:
        yield {
            "image": entry.get("file_name") or entry.get("image") or "",
            "question": entry.get("question") or "Describe this image.",
            "answer": entry.get("text") or entry.get("caption") or entry.get("answer") or "",
        }


def _read_hub(source: Source) -> Iterator[dict[str, Any]]:
    from vlmflow_worker.models import _hub_reachable

    if not _hub_reachable():  # fail in seconds, not after minutes of retries
        raise NotFound(
            f"sources[{source.index}].uri {source.spec.uri!r} is not a local path inside the allowed roots and the "
            "hub is unreachable; download the dataset to a data root and pass its path"
        )
    try:
        import datasets

        data = datasets.load_dataset(source.hub_id, source.spec.subset or None, split=source.spec.split or "train")
    except Exception as err:  # offline, unknown id, gated: all say "not found here"
        raise NotFound(
            f"sources[{source.index}].uri {source.spec.uri!r} is not a local path inside the allowed roots and "
            f"could not be loaded from the hub ({type(err).__name__}: {str(err)[:200]}); download it to a data "
            "root and pass its path"
        ) from err
    yield from data
