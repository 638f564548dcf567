"""Start a local Ray for a job, or join an existing cluster (--ray-address / RAY_ADDRESS).

A local Ray is ours to clean up, and `ray.shutdown()` alone does not: its dashboard and
runtime-env agents outlive a driver killed with -9. So it runs in a session folder of its own
(ray_session.py), every process it starts carries that folder in its environment, `shutdown`
ends them all, a watchdog ends them when this process dies without a shutdown, and the next
`connect` reaps any session whose owner is gone.
"""

from __future__ import annotations

import atexit
import os
import subprocess

import ray
import structlog

from cluster import ray_session

log = structlog.get_logger()

_started = None  # the session folder (a Path) of the local Ray this process started
_watchdog = None  # its watchdog process (subprocess.Popen)
_registered = False


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict:
    """Join the cluster at `address` (or $RAY_ADDRESS); with neither, start a local one.

    A local cluster is always a fresh one (address="local"): a bare ray.init() would silently
    join any cluster another program started on this machine with `ray start`.
    Returns the cluster's total resources.
    """
    global _started, _registered, _watchdog
    if ray.is_initialized():
        return ray.cluster_resources()
    if not _registered:  # registered before Ray's own atexit hook, so it runs after it
        atexit.register(shutdown)
        _registered = True
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        log.info("ray.join", address=address)
        ray.init(address=address, **kwargs)
    else:
        reaped = ray_session.reap_orphans()
        session = ray_session.new_session()
        log.info("ray.start_local", num_cpus=num_cpus, session=str(session), orphans_reaped=len(reaped))
        _watchdog = ray_session.start_watchdog(session)
        _started = session  # before ray.init: a Ctrl-C during start-up ends what it started
        os.environ[ray_session.SESSION_ENV] = str(session)  # inherited by every process Ray starts now
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(session), **kwargs)
        finally:
            os.environ.pop(ray_session.SESSION_ENV, None)  # not by what this process starts later
    return ray.cluster_resources()


def shutdown() -> None:
    """Leave the cluster; a local one that `connect` started ends with all its processes."""
    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:  # a second Ctrl-C inside ray.shutdown() still ends the local Ray
        _end_local()


def _end_local() -> None:
    global _started, _watchdog
    if _started is not None:
        session, _started = _started, None
        left = ray_session.end_session(session)
        if left:
            log.info("ray.local_leftovers_ended", session=str(session), pids=left)
    if _watchdog is not None:  # it quits within a second of the folder's removal; reap it
        watchdog, _watchdog = _watchdog, None
        try:
            watchdog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watchdog.kill()
