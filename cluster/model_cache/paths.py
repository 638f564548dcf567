"""Where the node's model cache lives ($LLMBATCH_CACHE, else ~/.cache/llmbatch), how big it may
grow ($LLMBATCH_CACHE_MAX_GB), and the node-wide lock that lets one process fetch a model while
the others on the node wait.

Layout under the root: `models/<builtin name>/` and `models/s3/<content key>/` (the cache
entries), `uses/` (one last-use record per entry), `locks/` (file locks), `hashes/` (memoized
sha256 of local model files).
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

DEFAULT_MAX_GB = 50.0
MAX_GB_ENV = "LLMBATCH_CACHE_MAX_GB"


def cache_root() -> Path:
    root = Path(os.environ.get("LLMBATCH_CACHE") or Path.home() / ".cache" / "llmbatch")
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    d = cache_root() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_subdir(name: str) -> Path:
    """A bookkeeping folder of the cache root (uses, locks, hashes), created on first use."""
    d = cache_root() / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def node_lock(name: str) -> FileLock:
    """An exclusive lock shared by every process on this node (several actors, one download);
    use it as a context manager."""
    return FileLock(cache_subdir("locks") / f"{name}.lock")


def max_cache_bytes() -> int:
    """The cap on the models under `models/`: $LLMBATCH_CACHE_MAX_GB gigabytes (10**9 bytes),
    default 50. A bad value is an error naming the variable, not a silent default."""
    raw = os.environ.get(MAX_GB_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        gb = float(raw)
    except ValueError:
        raise ValueError(f"{MAX_GB_ENV}={raw!r} is not a number of gigabytes") from None
    if not gb > 0 or gb == float("inf"):
        raise ValueError(f"{MAX_GB_ENV}={raw!r} must be a positive number of gigabytes")
    return int(gb * 1e9)
