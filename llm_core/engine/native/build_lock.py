"""A lock around the CPU kernels' build that a killed builder cannot leave held.

torch's extension builder guards a build folder with a `lock` file it deletes when done; a builder
killed mid-build (an actor killed by Ray, a Ctrl-C, the OOM killer) leaves that file behind, and
every later process then waits on it forever. This lock is an flock on a file beside the build
folder instead: the kernel releases it when its holder dies. Whoever holds it is the only
llmbatch process building or loading that build, so a torch `lock` file found there is a dead
builder's, and is removed. The wait is bounded: past it the caller runs without the kernels
rather than stall a job.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

log = structlog.get_logger()

POLL_S = 0.2


class BuildLockTimeout(TimeoutError):
    pass


@contextlib.contextmanager
def build_lock(build_dir: Path, wait_s: float) -> Iterator[None]:
    """Hold the build lock of `build_dir` (created if missing), waiting at most `wait_s` seconds."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.flock", "a+b") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildLockTimeout(f"another process held the build lock of {build_dir} for over "
                                           f"{wait_s:.0f} s") from None
                time.sleep(POLL_S)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("cpu_kernels.stale_build_lock_removed", path=str(stale),
                            detail="a builder was killed mid-build; building again")
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
