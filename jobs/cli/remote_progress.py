"""The progress bar of `llmbatch wait`: the same display as `llmbatch run`, fed from the API."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack, contextmanager

from jobs.cli.job_text import duration_text, rows_text
from jobs.run.results import JobProgress

PLAIN_EVERY_S = 10.0  # without a terminal, a line per state or shard change, else one this often


@contextmanager
def remote_progress():
    """Yields a callback taking a job (the API's dict) that draws jobs.run.display.ProgressDisplay;
    plain lines on stderr when that is not a terminal (logs, CI, tests)."""
    if not sys.stderr.isatty():
        last: list = [None, 0.0, None]  # (state, shards), when printed, rows

        def plain(job: dict) -> None:
            p = job.get("progress") or {}
            done = sum(int(p.get(k) or 0) for k in ("shards_done", "shards_skipped", "shards_failed"))
            key, now = (job["state"], done), time.monotonic()
            rows_moved = job.get("rows") != last[2] and now - last[1] >= PLAIN_EVERY_S
            if key != last[0] or rows_moved:
                eta = f", eta {duration_text(job['eta_s'])}" if job.get("eta_s") is not None else ""
                print(f"{job['id']} {job['state']} shards {done}/{p.get('shards_total', 0)}, {rows_text(job)}{eta}",
                      file=sys.stderr, flush=True)
                last[:] = [key, now, job.get("rows")]

        yield plain
        return
    # The rich display and its summary figures (pyarrow, the metrics) load only for a terminal.
    from jobs.run.display import ProgressDisplay

    with ExitStack() as stack:
        display: list = []

        def update(job: dict) -> None:
            if not display:  # the bar is named after the job, known from the first answer
                display.append(stack.enter_context(ProgressDisplay(job["name"])))
            p = job.get("progress")
            if p:
                display[0].update(JobProgress.from_dict(p))

        yield update
