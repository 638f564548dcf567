"""Where model folders live on each node: $LLMBATCH_CACHE, else ~/.cache/llmbatch."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def cache_root() -> Path:
    root = Path(os.environ.get("LLMBATCH_CACHE") or Path.home() / ".cache" / "llmbatch")
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    d = cache_root() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def node_lock(name: str):
    """An exclusive lock shared by every process on this node (several actors, one download)."""
    locks = cache_root() / "locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
