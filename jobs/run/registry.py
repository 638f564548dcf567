"""The runner of each kind of manifest: a plain mapping, one entry per `kind`."""

from __future__ import annotations

from jobs.run.inference import run_job
from jobs.run.protocol import Runner
from jobs.run.results import JobResult


def run_training(manifest, **kwargs) -> JobResult:
    # torch, DeepSpeed and Ray Train load only when a training job runs, never in the service
    # process (which imports this module through the job runner actor) or a CLI that only submits.
    from jobs.run.training import run_training as run

    return run(manifest, **kwargs)


RUNNERS: dict[str, Runner] = {"inference": run_job, "training": run_training}


def runner_for(manifest) -> Runner:
    """The runner of this manifest's kind (`kind: inference` or `kind: training`)."""
    return RUNNERS[manifest.kind]
