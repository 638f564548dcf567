"""The job runner on the cluster: one detached, named Ray actor per job.

It outlives the service process, so a restarted service finds it by name and re-attaches
instead of starting the job again. `run_job` runs in a thread so that progress(), result()
and cancel() answer while the job works.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import threading
import time
import traceback
from typing import Any

import ray

NAMESPACE = "llmbatch"
DEFAULT_RUNNER = "jobs.run.inference:run_job"
TRAINING_RUNNER = "jobs.run.training:run_training"


def actor_name(job_id: str) -> str:
    return f"llmbatch-runner-{job_id}"


def _as_dict(obj: Any) -> dict | None:
    """A JobProgress/JobResult as plain JSON data (it goes into the store as is)."""
    if obj is None:
        return None
    if hasattr(obj, "to_dict"):
        data = obj.to_dict()
    elif dataclasses.is_dataclass(obj):
        data = dataclasses.asdict(obj)
    else:
        data = dict(obj) if isinstance(obj, dict) else {"value": str(obj)}
    return json.loads(json.dumps(data, default=str))


@ray.remote(num_cpus=0, max_restarts=0)
class JobRunner:
    def __init__(self, job_id: str, manifest: dict, runner: str = DEFAULT_RUNNER,
                 ray_address: str | None = None):
        self.job_id, self.manifest, self.runner, self.ray_address = job_id, manifest, runner, ray_address
        self._cancel = threading.Event()
        self._progress: dict | None = None
        self._result: dict | None = None
        self._thread: threading.Thread | None = None
        self._started_at = time.time()

    def start(self) -> bool:
        """Begin the run once; later calls (a re-attaching service) change nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"run-{self.job_id}", daemon=True)
            self._thread.start()
            return True
        return False

    def _run(self) -> None:
        from cluster import logs

        logs.ensure_configured()
        import structlog

        structlog.contextvars.bind_contextvars(job_id=self.job_id)
        try:
            from jobs.manifest.schema import parse_manifest

            manifest = parse_manifest(self.manifest, f"job {self.job_id}")
            runner = self.runner
            if runner == DEFAULT_RUNNER and getattr(manifest, "kind", "inference") == "training":
                runner = TRAINING_RUNNER  # same signature and results
            module, _, fn = runner.partition(":")
            run_job = getattr(importlib.import_module(module), fn)
            result = run_job(manifest, job_id=self.job_id, ray_address=self.ray_address,
                             on_progress=self._on_progress, cancel=self._cancel, show_progress=False)
            self._result = _as_dict(result)
        except BaseException as exc:  # the service must learn of every way a run ends
            structlog.get_logger().error("runner.crashed", error=repr(exc))
            self._result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                            "summary": {"traceback": traceback.format_exc()[-4000:]}, "output_uri": None}

    def _on_progress(self, progress: Any) -> None:
        self._progress = _as_dict(progress)

    def progress(self) -> dict | None:
        return self._progress

    def result(self) -> dict | None:
        return self._result

    def poll(self) -> tuple[dict | None, dict | None]:
        """(progress, result) in one round trip."""
        return self._progress, self._result

    def cancel(self) -> None:
        self._cancel.set()
