"""Use one cache entry: hold it, fetch it when absent, record the use, keep the cache in its cap.

The resolver (workers.model_resolver) decides where a model's entry lives and how to fetch it;
this is the order every entry goes through, the same for built-in and S3 models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cluster.model_cache import lru, usage


def use_entry(entry: Path, ref: str, fetch: Callable[[Path], object]) -> Path:
    """Return `entry` (a folder under models/), fetched by `fetch(entry)` if it is absent.

    `fetch` must create the folder whole or not at all (temp dir + rename, under the node
    lock). The entry is held for the life of this process before anything else, so an eviction
    elsewhere on the node cannot remove it between the check and the use; after a fetch the
    least recently used other entries are evicted down to the cap.
    """
    entry = Path(entry)
    usage.hold(entry)
    fetched = not entry.is_dir()
    if fetched:
        fetch(entry)
    usage.touch(entry, ref)
    if fetched:
        lru.evict_to_cap(keep=entry)
    return entry
