"""The cache's size cap: least-recently-used entries are evicted after each fetch.

Entries are the model folders under `models/`: one per built-in model (`models/<name>`) and one
per S3 model content (`models/s3/<content key>`), legacy folders included. Hidden names are
temp folders of downloads in progress and are never entries. After a fetch, `evict_to_cap`
removes the least recently used entries until the total is within $LLMBATCH_CACHE_MAX_GB, never
the entry just fetched and never one that a live process on this node holds (see
cluster.model_cache.usage); each removal and each skip is logged.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from cluster.model_cache import usage
from cluster.model_cache.paths import cache_root, max_cache_bytes, models_dir

log = structlog.get_logger()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    key: str  # path under models/: "smollm2-135m-instruct", "s3/<content key>"
    ref: str | None  # the model reference it was fetched for, when recorded
    bytes: int
    last_used: float  # epoch seconds


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we walked
                pass
    return total


def _entry_folders() -> list[Path]:
    top = models_dir()
    found = [p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "s3"]
    if (top / "s3").is_dir():
        found += [p for p in (top / "s3").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return found


def entries() -> list[CacheEntry]:
    """Every entry, least recently used first."""
    out = []
    for folder in _entry_folders():
        try:
            out.append(CacheEntry(path=folder, key=usage.entry_key(folder), ref=usage.recorded_ref(folder),
                                  bytes=_folder_bytes(folder), last_used=usage.last_used(folder)))
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
    return sorted(out, key=lambda e: (e.last_used, e.key))


def _in_use(entry: Path) -> bool:
    with usage.exclusive(entry) as mine:
        return not mine


def cache_usage() -> dict:
    """What the cache holds, for `llmbatch models list`: root, cap, total and each entry
    (key, ref, bytes, last_used epoch seconds, in_use by a live process on this node)."""
    listed = entries()
    return {
        "root": str(cache_root()),
        "max_bytes": max_cache_bytes(),
        "total_bytes": sum(e.bytes for e in listed),
        "entries": [{"key": e.key, "ref": e.ref, "path": str(e.path), "bytes": e.bytes,
                     "last_used": e.last_used, "in_use": _in_use(e.path)} for e in listed],
    }


def _remove(entry: CacheEntry) -> bool:
    """Delete one entry unless some process holds it. It is first renamed to a hidden name, so
    readers see it whole or not at all."""
    with usage.exclusive(entry.path) as mine:
        if not mine:
            return False
        if not entry.path.is_dir():  # another process evicted it first
            return True
        doomed = entry.path.with_name(f".evicting-{entry.path.name}-{uuid.uuid4().hex[:8]}")
        os.rename(entry.path, doomed)
        usage.forget(entry.path)
        shutil.rmtree(doomed, ignore_errors=True)
    return True


def _remove_leftovers() -> None:
    """Folders of evictions that a killed process left half-removed (no one uses them)."""
    top = models_dir()
    for doomed in [*top.glob(".evicting-*"), *top.glob("s3/.evicting-*")]:
        shutil.rmtree(doomed, ignore_errors=True)


def evict_to_cap(keep: Path, cap: int | None = None) -> list[CacheEntry]:
    """Remove least-recently-used entries until the cache is within `cap` bytes (default
    $LLMBATCH_CACHE_MAX_GB); `keep` (the entry just fetched) is never removed. Returns the
    removed entries."""
    cap = max_cache_bytes() if cap is None else cap
    _remove_leftovers()
    listed = entries()
    total = sum(e.bytes for e in listed)
    removed: list[CacheEntry] = []
    keep = Path(keep)
    for entry in listed:
        if total <= cap:
            break
        if entry.path == keep:
            continue
        if not _remove(entry):
            log.info("model_cache.evict_skipped", entry=entry.key, ref=entry.ref, bytes=entry.bytes,
                     reason="in use by a process on this node")
            continue
        total -= entry.bytes
        removed.append(entry)
        log.info("model_cache.evicted", entry=entry.key, ref=entry.ref, bytes=entry.bytes,
                 idle_s=round(time.time() - entry.last_used), total_bytes=total, max_bytes=cap)
    if total > cap:
        log.warning("model_cache.over_cap", total_bytes=total, max_bytes=cap,
                    hint="the entries left are in use or just fetched; raise LLMBATCH_CACHE_MAX_GB")
    return removed
