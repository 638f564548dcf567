"""The live display of `llmbatch run`: rows of the job's total, error rows, tok/s and ETA; log
lines printed while it is live land above it, whole, never inside the bar's line."""

from __future__ import annotations

import io
import re

import structlog
from rich.console import Console

from cluster import logs
from jobs.run.display import ProgressDisplay, eta_text, print_summary
from jobs.run.results import JobProgress, JobResult

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=150, color_system=None), buffer


def _lines(buffer: io.StringIO) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]", ANSI.sub("", buffer.getvalue())) if line.strip()]


def test_the_bar_counts_rows_of_the_total_with_errors_pace_and_eta():
    console, buffer = _console()
    with ProgressDisplay("nightly", console=console) as show:
        show.update(JobProgress(rows_total=1000, rows=600, error_rows=7, completion_tokens=900,
                                elapsed_s=9.0, rows_per_s=50.0, eta_s=8.0, shards_total=4, phase="running"))
    last = _lines(buffer)[-1]
    assert "nightly" in last and "600/1000 rows" in last
    assert "7 error rows" in last and "100.0 tok/s" in last and "ETA 0:00:08" in last


def test_training_shows_steps_and_loss():
    console, buffer = _console()
    p = JobProgress(phase="running", elapsed_s=2.0)
    p.record({"event": "step", "step": 3, "total_steps": 10, "loss": 2.5, "tokens_per_s": 700.0})
    with ProgressDisplay("tune", console=console) as show:
        show.update(p)
    last = _lines(buffer)[-1]
    assert "3/10 steps" in last and "loss 2.5000" in last and "ETA" not in last


def test_eta_text():
    assert eta_text(JobProgress(eta_s=None)) == ""
    assert eta_text(JobProgress(eta_s=3725.4)) == "ETA 1:02:05"
    assert eta_text(JobProgress(eta_s=5, phase="done")) == ""


def test_log_lines_print_above_the_live_display(monkeypatch):
    monkeypatch.setenv("LLMBATCH_LOG_FORMAT", "text")
    console, buffer = _console()
    logs.configure(json=False)
    try:
        with ProgressDisplay("nightly", console=console) as show:
            show.update(JobProgress(rows_total=10, rows=2, phase="running", elapsed_s=1.0))
            structlog.get_logger().info("shard.committed", shard_id="abc", rows=5)
            show.update(JobProgress(rows_total=10, rows=5, phase="running", elapsed_s=2.0))
    finally:
        logs.configure()
    lines = _lines(buffer)
    logged = [line for line in lines if "shard.committed" in line]
    assert len(logged) == 1 and "shard_id=abc" in logged[0] and "rows=5" in logged[0]
    assert "/10" not in logged[0] and not logged[0].startswith("nightly")  # not inside the bar's line
    assert re.match(r"\d\d:\d\d:\d\d \[info", logged[0])  # the readable format: time of day, level
    assert "5/10 rows" in lines[-1]


def test_nothing_is_drawn_without_a_terminal():
    buffer = io.StringIO()
    with ProgressDisplay("nightly", console=Console(file=buffer, force_terminal=False)) as show:
        show.update(JobProgress(rows_total=10, rows=5))
    assert buffer.getvalue() == ""


def test_summary_names_the_actor_log():
    buffer = io.StringIO()
    print_summary(JobResult("succeeded", "/out", None, {"job_id": "j", "rows": 3, "actor_log": "/logs/j.actors.log"}),
                  file=buffer)
    assert "/logs/j.actors.log" in buffer.getvalue()
