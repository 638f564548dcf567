"""The job runner on the cluster: one detached, named Ray actor per job.

It outlives the service process, so a restarted service finds it by name and re-attaches
instead of starting the job again. The run itself goes on in a thread, so that progress(),
result() and cancel() answer while the job works. What it hands out is plain JSON data:
`JobProgress.to_dict()` and `JobResult.to_dict()` (rebuilt by `JobResult.from_dict`).
"""

from __future__ import annotations

import json
import threading
import traceback

import ray
import structlog

from cluster import logs, storage
from jobs.lifecycle import JobState
from jobs.manifest import parse_manifest
from jobs.run.protocol import Runner
from jobs.run.results import JobProgress, JobResult

NAMESPACE = "llmbatch"
DEFAULT_RUNNER: Runner | None = None  # None: the runner of the manifest's kind (jobs.run.registry)


def actor_name(job_id: str) -> str:
    return f"llmbatch-runner-{job_id}"


def _plain(data: dict) -> dict:
    """JSON-safe as the store keeps it (dates and the like as strings)."""
    return json.loads(json.dumps(data, default=str))


def _progress_data(progress: JobProgress | dict) -> dict:
    return _plain(progress.to_dict() if isinstance(progress, JobProgress) else dict(progress))


def _result_data(result: JobResult | dict) -> dict:
    # A runner answers a JobResult; a test runner may answer its wire shape directly.
    result = result if isinstance(result, JobResult) else JobResult.from_dict(result)
    return _plain(result.to_dict())


@ray.remote(num_cpus=0, max_restarts=0)
class JobRunner:
    def __init__(self, job_id: str, manifest: dict, runner: Runner | None = DEFAULT_RUNNER,
                 ray_address: str | None = None, s3_settings: storage.S3Settings | None = None,
                 scope: storage.Scope | None = None):
        self.job_id, self.manifest, self.runner, self.ray_address = job_id, manifest, runner, ray_address
        storage.use_s3_settings(s3_settings)  # the service's, passed on to the actors this run starts
        # The owner's scope (None: unrestricted): this process and every actor the run starts
        # check it at each open, read, write and delete.
        storage.use_scope(scope)
        self._cancel = threading.Event()
        self._progress: dict | None = None
        self._result: dict | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Begin the run once; later calls (a re-attaching service) change nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"run-{self.job_id}", daemon=True)
            self._thread.start()
            return True
        return False

    def _run(self) -> None:
        # The runners import the engines and the evaluation: loaded here, in the job's own
        # actor, not in the service process that imports this module for the actor class.
        from jobs.run.registry import runner_for

        logs.ensure_configured()
        structlog.contextvars.bind_contextvars(job_id=self.job_id)
        try:
            manifest = parse_manifest(self.manifest, f"job {self.job_id}")
            run = self.runner or runner_for(manifest)
            result = run(manifest, job_id=self.job_id, ray_address=self.ray_address,
                         on_progress=self._on_progress, cancel=self._cancel, show_progress=False)
            self._result = _result_data(result)
        except storage.ScopeError as exc:  # a refusal, not a crash: one line naming the file and rule
            structlog.get_logger().warning("runner.refused", error=str(exc))
            self._result = JobResult(JobState.FAILED, None, str(exc), {}).to_dict()
        except BaseException as exc:  # the service must learn of every way a run ends
            structlog.get_logger().error("runner.crashed", error=repr(exc))
            self._result = JobResult(JobState.FAILED, None, f"{type(exc).__name__}: {exc}",
                                     {"traceback": traceback.format_exc()[-4000:]}).to_dict()

    def _on_progress(self, progress: JobProgress | dict) -> None:
        self._progress = _progress_data(progress)

    def progress(self) -> dict | None:
        return self._progress

    def result(self) -> dict | None:
        return self._result

    def poll(self) -> tuple[dict | None, dict | None]:
        """(progress, result) in one round trip."""
        return self._progress, self._result

    def cancel(self) -> None:
        self._cancel.set()
