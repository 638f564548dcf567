"""structlog setup: readable lines on a terminal, JSON lines otherwise (files, CI, Ray workers).

Terminal lines are written to whatever `sys.stderr` is at the moment of the call, so while a
live display (rich) has taken over stderr they print above it instead of into its line.
Inference actors of a local run on a terminal log to a file of their own (`actor_log_file`),
named at the end of the run and shown live only with LLMBATCH_VERBOSE=1 (`llmbatch -v`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

import structlog

LOG_DIR_ENV = "LLMBATCH_LOG_DIR"  # where actor log files go (default: <cache root>/logs)
VERBOSE_ENV = "LLMBATCH_VERBOSE"  # "1": actor log lines are shown on the terminal too

_configured = False


class _StderrLogger:
    """Prints to the current sys.stderr (looked up per line, unlike structlog's PrintLogger)."""

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


class _FileLogger:
    """Appends one line per event to a file; each line is one write (O_APPEND), so the actors
    sharing a file never interleave within a line."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (open for the process)
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._file.write(message + "\n")

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


def _level(level: str | None) -> int:
    name = (level or os.environ.get("LLMBATCH_LOG_LEVEL", "INFO")).upper()
    return getattr(logging, name, logging.INFO)


def wants_json() -> bool:
    return os.environ.get("LLMBATCH_LOG_FORMAT") == "json" or not sys.stderr.isatty()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "no")


def readable_renderer() -> structlog.dev.ConsoleRenderer:
    """The terminal format: time of day, level, event, then the key=value pairs."""
    return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), pad_event_to=24)


def _processors(timestamp_fmt: str) -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt=timestamp_fmt, utc=True),
        structlog.processors.format_exc_info,
    ]


def _without_job_id(_, __, event: dict) -> dict:
    """A terminal shows one job, named by its display and summary: its id on every line is noise."""
    event.pop("job_id", None)
    return event


def _with_pid(_, __, event: dict) -> dict:
    """Which process wrote a line of a file that several actors share."""
    event.setdefault("pid", os.getpid())
    return event


def configure(level: str | None = None, json: bool | None = None) -> None:
    global _configured
    if json is None:
        json = wants_json()
    tail = [structlog.processors.JSONRenderer()] if json else [_without_job_id, readable_renderer()]
    structlog.configure(
        processors=[*_processors("iso" if json else "%H:%M:%S"), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=lambda *_: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
    _configured = True


def configure_file(path: str | Path, level: str | None = None) -> None:
    """JSON lines appended to `path` (an actor's log of a run on a terminal)."""
    global _configured
    logger = _FileLogger(Path(path))
    structlog.configure(
        processors=[*_processors("iso"), _with_pid, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=lambda *_: logger,
        cache_logger_on_first_use=False,
    )
    _configured = True


def ensure_configured() -> None:
    if not _configured:
        configure()


def log_dir() -> Path:
    """$LLMBATCH_LOG_DIR, else `logs/` under the cache root ($LLMBATCH_CACHE or ~/.cache/llmbatch)."""
    root = os.environ.get(LOG_DIR_ENV) or Path(
        os.environ.get("LLMBATCH_CACHE") or Path.home() / ".cache" / "llmbatch") / "logs"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def actor_log_file(job_id: str) -> Path:
    """The file the actors of job `job_id` log to (created empty, so it exists to be named)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id) or "job"
    path = log_dir() / f"{safe}.actors.log"
    path.touch()
    return path


class _Follower:
    """Prints the lines appended to a log file (the actors' JSON lines) in the terminal format,
    above a live display; `stop()` prints what is left and ends the thread."""

    def __init__(self, path: Path, every_s: float = 0.5):
        self.path = Path(path)
        self.every_s = every_s
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.partial = ""
        self._stop = threading.Event()
        self._render = readable_renderer()
        self._thread = threading.Thread(target=self._run, name="actor-log-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.read()
        self.read()

    def read(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except OSError:
            return
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if line.strip():
                _StderrLogger().msg(self.readable(line))

    def readable(self, line: str) -> str:
        try:
            event = json.loads(line)
        except ValueError:
            return line
        if not isinstance(event, dict):
            return line
        stamp = str(event.get("timestamp", ""))
        event["timestamp"] = stamp[11:19] if len(stamp) >= 19 else stamp  # the time of day (UTC)
        return self._render(None, "", _without_job_id(None, "", event))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def follow(path: str | Path) -> _Follower:
    """Show on the terminal what actors write to `path` from now on (`llmbatch -v`)."""
    return _Follower(Path(path))
