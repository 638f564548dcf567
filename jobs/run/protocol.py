"""The run protocol every kind of job follows, written once: inference and training runners differ
in the work between the output mode and the outcome.

A runner is a function with the `Runner` signature. It opens a `Run`, which owns the job id,
the output location, the progress (one `JobProgress`, drawn and handed to `on_progress`) and
how the run ends: a `JobResult` whose status is a `JobState` (succeeded, partial, failed,
cancelled). An inference run publishes a snapshot of its parts (workers.output.snapshot, called
by jobs.run.inference); a training run's output is a model folder whose `_SUCCESS.json` is
written last by `succeed_model`.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import structlog

from jobs.lifecycle import JobState
from jobs.run.display import ProgressDisplay
from jobs.run.results import JobProgress, JobResult
from workers.output.location import OutputLocation

log = structlog.get_logger()

ProgressCallback = Callable[[JobProgress], None]


class Runner(Protocol):
    """Run one job from manifest to its outcome; never raises for a failed run."""

    def __call__(self, manifest, *, job_id: str | None = None, ray_address: str | None = None,
                 on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                 show_progress: bool = False) -> JobResult: ...


class Run:
    """One run of a job: `with Run(...) as run:` binds the job id to the logs and shows progress."""

    def __init__(self, name: str, output: OutputLocation, *, job_id: str | None = None,
                 on_progress: ProgressCallback | None = None, show_progress: bool = False):
        self.job_id = job_id or f"{name}-{uuid.uuid4().hex[:8]}"
        self.output = output
        self.progress = JobProgress()
        self.started = time.time()
        self._on_progress = on_progress
        self._display = ProgressDisplay(name) if show_progress else None

    def __enter__(self) -> "Run":
        structlog.contextvars.bind_contextvars(job_id=self.job_id)
        if self._display:
            self._display.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._display:
            self._display.__exit__(*exc)
        structlog.contextvars.unbind_contextvars("job_id")

    @property
    def wall_s(self) -> float:
        return time.time() - self.started

    def publish(self, **changes) -> None:
        """Change progress fields, then draw it and hand a snapshot to `on_progress`."""
        for name, value in changes.items():
            setattr(self.progress, name, value)
        self.progress.elapsed_s = self.wall_s
        if self._display:
            self._display.update(self.progress)
        if self._on_progress:
            self._on_progress(copy.deepcopy(self.progress))

    def prepare_model(self, mode: str) -> JobResult | None:
        """Apply the output mode to a model folder (a training output); the earlier outcome when
        a finished model makes this run unnecessary. Raises OutputExistsError when the mode refuses."""
        earlier = self.output.prepare_model_output(mode)
        if earlier is None:
            return None
        log.info("job.already_done", output=self.output.uri)
        return JobResult(JobState.SUCCEEDED, self.output.uri, None, earlier)

    def succeed_model(self, summary: dict) -> JobResult:
        """Write the model folder's `_SUCCESS.json` (the last write of a training run) and end it succeeded."""
        summary = {"job_id": self.job_id, **summary}
        self.output.publish_model(summary)
        self.publish(phase="done")
        return JobResult(JobState.SUCCEEDED, self.output.uri, None, summary)

    def end(self, state: JobState, error: str | None, summary: dict | None = None) -> JobResult:
        """End the run failed or cancelled; nothing is published (the previous snapshot stays)."""
        log.warning("job.ended", status=state.value, error=error)
        return JobResult(state, self.output.uri, error, summary or {})

    def counts(self, state: JobState) -> dict:
        """The summary of a run that ended early: its progress counts."""
        p, wall = self.progress, self.wall_s
        return {
            "job_id": self.job_id, "status": state.value, "rows": p.rows, "error_rows": p.error_rows,
            "completion_tokens": p.completion_tokens, "shards_total": p.shards_total,
            "shards_committed": p.shards_done, "shards_skipped": p.shards_skipped,
            "shards_failed": p.shards_failed, "wall_s": round(wall, 3),
            "tokens_per_s": round(p.completion_tokens / wall, 2) if wall > 0 else 0.0, "output": self.output.uri,
        }
