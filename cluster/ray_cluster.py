"""Start a local Ray for a job, or join an existing cluster (--ray-address / RAY_ADDRESS)."""

from __future__ import annotations

import os

import ray
import structlog

log = structlog.get_logger()


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict:
    """Join the cluster at `address` (or $RAY_ADDRESS); with neither, start a local one.

    A local cluster is always a fresh one (address="local"): a bare ray.init() would silently
    join any cluster another program started on this machine with `ray start`.
    Returns the cluster's total resources.
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ship our packages to workers when joining a remote cluster that may not have them.
    kwargs: dict = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        log.info("ray.join", address=address)
        ray.init(address=address, **kwargs)
    else:
        log.info("ray.start_local", num_cpus=num_cpus)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    return ray.cluster_resources()


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
