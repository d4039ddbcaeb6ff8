"""Paths in requests are confined to the worker's roots: the artifact root and the configured data roots.

A URI is a local path (absolute, or relative to the artifact root) or `file://...`. Remote schemes (s3://, ...)
go through fsspec where a deployment configures them; here they are refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from vlmflow_worker.errors import InvalidArgument, PathOutsideRoots
from vlmflow_worker.serve.settings import WorkerSettings


def allowed_roots(settings: WorkerSettings) -> list[Path]:
    return [settings.artifact_root, *settings.data_roots]


def resolve_uri(uri: str, settings: WorkerSettings, what: str = "path") -> Path:
    """Returns the absolute local path for `uri`, or raises PathOutsideRoots naming `what` and the roots.

    Symlinks are resolved before the check, so a link inside a root that points outside is refused too.
    """
    if not uri:
        raise InvalidArgument(f"{what} is empty")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise InvalidArgument(f"{what} {uri!r}: the {scheme}:// scheme is not supported by this worker")
    raw = Path(uri)
    path = (raw if raw.is_absolute() else settings.artifact_root / raw).resolve()
    roots = allowed_roots(settings)
    if not any(path == root or path.is_relative_to(root) for root in roots):
        listed = ", ".join(str(r) for r in roots)
        raise PathOutsideRoots(f"{what} {uri!r} is outside the allowed roots ({listed})")
    return path
