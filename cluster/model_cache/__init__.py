"""Where model folders live on each node ($LLMBATCH_CACHE, else ~/.cache/llmbatch), and the
node-wide lock that lets one process fetch a model while the others on the node wait."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock


def cache_root() -> Path:
    root = Path(os.environ.get("LLMBATCH_CACHE") or Path.home() / ".cache" / "llmbatch")
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    d = cache_root() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def node_lock(name: str) -> FileLock:
    """An exclusive lock shared by every process on this node (several actors, one download);
    use it as a context manager."""
    locks = cache_root() / "locks"
    locks.mkdir(exist_ok=True)
    return FileLock(locks / f"{name}.lock")
