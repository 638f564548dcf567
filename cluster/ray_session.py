"""The processes of a local Ray that this program started, found and ended without Ray's help.

Every process a local Ray starts (GCS, raylet, the dashboard and runtime-env agents, workers,
which rename themselves `ray::...` and are re-parented when their parent dies) inherits the
session folder in its environment (SESSION_ENV), so they can all be found by it. The folder's
`owner` file names the pid and start time of the process that started it. When that process is
killed with -9, its watchdog (`python -m cluster.ray_session watch ...`, started with it) or the
next `reap_orphans` ends the session. Only this user's processes that carry exactly that folder
are touched: never a cluster started with `ray start`, another user's, or a live owner's.
Imports nothing heavy (no Ray): the watchdog is a small, long-lived process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SESSION_ENV = "LLMBATCH_RAY_SESSION"
# Short on purpose: Ray's unix socket paths live below it and must fit in 107 bytes.
LOCAL_BASE = Path(os.environ.get("LLMBATCH_RAY_TMP") or Path(tempfile.gettempdir()) / f"llmbatch-ray-{os.getuid()}")
_PROC = Path("/proc")


def new_session() -> Path:
    """A fresh session folder owned by this process (its `owner` file written first)."""
    LOCAL_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
    session = LOCAL_BASE / f"s-{uuid.uuid4().hex[:8]}"
    session.mkdir(mode=0o700)
    (session / "owner").write_text(f"{os.getpid()} {_start_ticks(os.getpid())}\n")
    return session


def start_watchdog(session: Path) -> subprocess.Popen:
    """A small process that ends the session once this one is gone (even by kill -9); it quits
    by itself when the session folder is removed (a normal shutdown). Its own session and process
    group: a Ctrl-C to our terminal does not reach it."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != SESSION_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "cluster.ray_session", "watch", str(session)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def session_pids(session: Path | str) -> list[int]:
    """This user's processes that carry `session` in their environment (Linux; else none)."""
    marker = f"{SESSION_ENV}={session}".encode()
    pids = []
    for entry in _PROC.glob("[0-9]*") if _PROC.is_dir() else ():
        try:
            if entry.stat().st_uid != os.getuid() or int(entry.name) == os.getpid():
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return pids


def end_session(session: Path, wait_s: float = 10.0) -> list[int]:
    """SIGKILL every process of `session`, wait for them to go, remove its folder; returns the pids."""
    pids = session_pids(session)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + wait_s
    while pids and time.monotonic() < deadline and session_pids(session):
        time.sleep(0.1)
    shutil.rmtree(session, ignore_errors=True)
    return pids


def reap_orphans() -> list[int]:
    """End the local Ray of every session under LOCAL_BASE whose owner process has died."""
    ended: list[int] = []
    for session in sorted(LOCAL_BASE.glob("s-*")) if LOCAL_BASE.is_dir() else ():
        owner = _read_owner(session)
        if owner is not None and not _alive(*owner):
            ended += end_session(session)
    return ended


def _read_owner(session: Path) -> tuple[int, str] | None:
    """(pid, start ticks) of the process that started the session; None while it is being made."""
    try:
        pid, ticks = (session / "owner").read_text().split()
        return int(pid), ticks
    except (OSError, ValueError):
        return None


def _alive(pid: int, ticks: str) -> bool:
    """Whether `pid` still runs and is the same process (not a later one given the same pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process holds the pid now; the owner was one of ours
    return _start_ticks(pid) == ticks


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); "?" off Linux."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def watch(session: Path, every_s: float = 1.0) -> int:
    """The watchdog's loop: end `session` when its owner dies; stop when the folder is gone."""
    owner = _read_owner(session)
    while owner is not None and session.is_dir():
        if not _alive(*owner):
            end_session(session)
            return 0
        time.sleep(every_s)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "watch":
        sys.exit(watch(Path(sys.argv[2])))
    sys.exit("usage: python -m cluster.ray_session watch SESSION_DIR")
