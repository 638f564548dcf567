"""The progress bar of `llmbatch wait`: the same display as `llmbatch run`, fed from the API."""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager

from jobs.run.results import JobProgress


@contextmanager
def remote_progress():
    """Yields a callback taking a job (the API's dict) that draws jobs.run.display.ProgressDisplay;
    plain lines on stderr when that is not a terminal (logs, CI, tests)."""
    if not sys.stderr.isatty():
        last: list = [None]

        def plain(job: dict) -> None:
            p = job.get("progress") or {}
            done = sum(int(p.get(k) or 0) for k in ("shards_done", "shards_skipped", "shards_failed"))
            key = (job["state"], done)
            if key != last[0]:
                print(f"{job['id']} {job['state']} shards {done}/{p.get('shards_total', 0)}",
                      file=sys.stderr, flush=True)
                last[0] = key

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
