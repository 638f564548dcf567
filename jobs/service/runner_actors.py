"""The scheduler's hands on Ray: create, find, start and kill the runner actor of a job.

Each job's runner is a detached actor named after the job (jobs/run/actor.py), so a restarted
service finds it again by name. What to do with a runner is the scheduler's decision; this
module only knows how to do it.
"""

from __future__ import annotations

import time

import ray

from cluster import storage
from jobs.run import actor as runner_actor
from jobs.run.protocol import Runner
from jobs.service import auth


class OwnerTokenGone(RuntimeError):
    """The token that submitted a job is revoked, expired or deleted: its job runs with no rights."""


def owner_scope(store, row: dict) -> storage.Scope:
    """What the job's owner may read and write now (the token's current prefixes)."""
    principal = auth.principal_by_name(store, row["owner"])
    if principal is None:
        raise OwnerTokenGone(f"the token '{row['owner']}' that submitted this job no longer exists "
                             "(revoked or expired); the job cannot run with its rights")
    return principal.scope


def find(job_id: str):
    """The live runner of a job, or None."""
    try:
        return ray.get_actor(runner_actor.actor_name(job_id), namespace=runner_actor.NAMESPACE)
    except ValueError:
        return None


def kill(handle) -> None:
    if handle is None:
        return
    try:
        ray.kill(handle)
    except Exception:  # already gone
        pass


def create(row: dict, runner: Runner | None, ray_address: str | None, store=None):
    """The runner actor of a claimed job (an existing one of that name is returned as is);
    `runner` None runs the runner of the manifest's kind. With the service's `store`, the job
    runs under its owner's scope (OwnerTokenGone when that token is gone); without, unrestricted."""
    scope = owner_scope(store, row) if store is not None else None
    manifest = row["manifest"]
    if row["attempts"] > 1:  # any later run resumes from the shards already committed
        manifest = {**manifest, "output": {**manifest["output"], "mode": "resume"}}
    for _ in range(100):
        try:
            return runner_actor.JobRunner.options(
                name=runner_actor.actor_name(row["id"]), namespace=runner_actor.NAMESPACE,
                lifetime="detached", get_if_exists=True,
            ).remote(row["id"], manifest, runner, ray_address, storage.s3_settings().for_scope(scope), scope)
        except ValueError:  # the name is still held by a runner being killed
            time.sleep(0.1)
    raise RuntimeError(f"could not create the runner of {row['id']}")


def start(row: dict, handle, runner: Runner | None, ray_address: str | None, store=None):
    """Start the run; a finished runner left by an earlier attempt is replaced first.
    Returns the handle of the runner that runs."""
    for _ in range(3):
        try:
            _, stale = ray.get(handle.poll.remote(), timeout=120)
        except ray.exceptions.RayActorError:  # got a runner that was being killed
            stale = True
        if stale is None:
            break
        ray.kill(handle)
        time.sleep(0.5)
        handle = create(row, runner, ray_address, store)
    ray.get(handle.start.remote(), timeout=60)
    return handle
