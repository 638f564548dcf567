"""Which model-cache entries are in use on this node, and when each was last used.

An entry (a model folder under `models/`) is in use while a process on this node that resolved
it is alive: `hold(entry)` takes a shared flock on the entry's use lock and keeps the file open
for the rest of the process's life, because an actor loads its model once and may read the
folder again (tokenizer, a reload) at any time. The kernel drops the lock when the process
exits, even when it is killed, so a crashed actor never pins an entry. Eviction takes the same
lock exclusively without waiting (`exclusive`), so it never removes an entry that a live
process holds, nor one being downloaded (the downloader holds it first). A process that resolves
an entry while it is being evicted waits for the eviction, then finds it absent and fetches it.

The last use is the mtime of `uses/<entry>.json`, touched on every resolve; the file also
names the reference the entry was fetched for, for `llmbatch models list`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from cluster.hashing import text_sha256
from cluster.model_cache.paths import cache_subdir, models_dir

_held: dict[str, int] = {}  # use lock path -> its open fd, held until the process exits


def entry_key(entry: Path) -> str:
    """The entry's path under `models/`: "smollm2-135m-instruct", "s3/<content key>"."""
    return Path(entry).relative_to(models_dir()).as_posix()


def _lock_path(entry: Path) -> Path:
    return cache_subdir("locks") / ("use-" + text_sha256(entry_key(entry))[:24] + ".lock")


def _open_lock(entry: Path) -> int:
    return os.open(_lock_path(entry), os.O_RDWR | os.O_CREAT, 0o644)


def hold(entry: Path) -> None:
    """Mark `entry` in use by this process until it exits (waits while it is being evicted)."""
    lock = str(_lock_path(entry))
    if lock in _held:
        return
    fd = _open_lock(entry)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    _held[lock] = fd


@contextlib.contextmanager
def exclusive(entry: Path) -> Iterator[bool]:
    """Yield True with the entry locked against every other user, or False at once when some
    process on this node (this one included) holds it."""
    fd = _open_lock(entry)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _record(entry: Path) -> Path:
    return cache_subdir("uses") / f"{entry_key(entry)}.json"


def touch(entry: Path, ref: str) -> None:
    """Record a use of `entry` now (and, the first time, the reference it holds)."""
    record = _record(entry)
    if record.is_file():
        os.utime(record)
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"ref": ref, "first_used": time.time()}))
    os.replace(tmp, record)


def last_used(entry: Path) -> float:
    """When the entry was last resolved (epoch seconds); an entry from before use records
    existed counts as used when its folder last changed."""
    try:
        return _record(entry).stat().st_mtime
    except FileNotFoundError:
        return Path(entry).stat().st_mtime


def recorded_ref(entry: Path) -> str | None:
    try:
        return str(json.loads(_record(entry).read_text())["ref"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def forget(entry: Path) -> None:
    _record(entry).unlink(missing_ok=True)


def release(entry: Path) -> None:
    """Stop holding `entry` (a process that is done with a model before it exits)."""
    fd = _held.pop(str(_lock_path(entry)), None)
    if fd is not None:
        os.close(fd)
