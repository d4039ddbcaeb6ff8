"""Imports of the heavy modules (torch, transformers, the job kinds) in the server process, one thread at a time.

transformers' lazy top-level module is not safe to import from two threads at once: the second thread can fail
with `cannot import name 'Trainer' from 'transformers'`. The server imports from three places: the event loop
(validating a job request), the thread that warms the job modules up after the first job starts, and the Generate
thread. Seen on 2026-12-01: the first Generate on a worker whose warm-up thread ran failed that way
(tests/test_heavy_imports.py reproduces it without this lock).
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

_lock = threading.RLock()


def import_module(name: str) -> ModuleType:
    # A module already imported is returned without the lock, as importlib itself does: validating a request of a
    # kind already imported must not wait seconds for the warm-up thread importing the other kinds. A module another
    # thread is still executing (`_initializing`) takes the lock, which that thread holds.
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        return module
    with _lock:
        return importlib.import_module(name)
