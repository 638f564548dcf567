"""Start a local Ray for a job, or join an existing cluster (--ray-address / RAY_ADDRESS).

A local Ray is ours to clean up, and `ray.shutdown()` alone does not: its dashboard and
runtime-env agents outlive a driver killed with -9. So it runs in a session folder of its own
(ray_session.py), every process it starts carries that folder in its environment, `shutdown`
ends them all, a watchdog ends them when this process dies without a shutdown, and the next
`connect` reaps any session whose owner is gone.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

# Ray folds similar lines of different workers into one with a "[repeated 2x across cluster]"
# note, which breaks JSON lines; read when Ray is imported, so set before.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
import structlog  # noqa: E402

from cluster import logs, ray_code, ray_session  # noqa: E402

log = structlog.get_logger()

_started = None  # the session folder (a Path) of the local Ray this process started
_watchdog = None  # its watchdog process (subprocess.Popen)
_registered = False
_actors_log_to_file = False  # the local Ray's workers do not stream to this terminal
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict:
    """Join the cluster at `address` (or $RAY_ADDRESS); with neither, start a local one.

    A local cluster is always a fresh one (address="local"): a bare ray.init() would silently
    join any cluster another program started on this machine with `ray start`.
    Returns the cluster's total resources.
    """
    global _started, _registered, _watchdog, _actors_log_to_file
    if ray.is_initialized():
        return ray.cluster_resources()
    if not _registered:  # registered before Ray's own atexit hook, so it runs after it
        atexit.register(shutdown)
        _registered = True
    address = address or os.environ.get("RAY_ADDRESS") or None
    # On a terminal, a local Ray's workers log to a file per job (actor_log_file), not into the
    # progress display; their lines are JSON lines on stderr otherwise (files, CI) or when joined.
    quiet = not address and not logs.wants_json()
    kwargs: dict = {"logging_level": "WARNING", "log_to_driver": not quiet}
    if address:
        log.info("ray.join", address=address)
        # The cluster's workers get this driver's llmbatch code, then prove they can run it.
        ray.init(address=address, runtime_env=ray_code.runtime_env(), **kwargs)
        try:
            ray_code.verify_workers()
        except ray_code.ClusterCodeMismatch:
            ray.shutdown()
            raise
    else:
        reaped = ray_session.reap_orphans()
        session = ray_session.new_session()
        log.info("ray.start_local", num_cpus=num_cpus, session=str(session), orphans_reaped=len(reaped))
        _watchdog = ray_session.start_watchdog(session)
        _started = session  # before ray.init: a Ctrl-C during start-up ends what it started
        os.environ[ray_session.SESSION_ENV] = str(session)  # inherited by every process Ray starts now
        try:
            with _quiet_auth_notice():
                # Workers' stdlib loggers at ERROR: without the dashboard (not started, to save a
                # core's worth of start-up) Ray Train's placement-group cleaner cannot reach the
                # state API and warns about it every second of a training run. Our own lines are
                # structlog's and pass; Ray's errors still show.
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(session),
                         logging_config=ray.LoggingConfig(log_level="ERROR"), **kwargs)
        finally:
            os.environ.pop(ray_session.SESSION_ENV, None)  # not by what this process starts later
        _actors_log_to_file = quiet
    return ray.cluster_resources()


@contextmanager
def _quiet_auth_notice():
    """Ray turns token auth on for a local cluster and says so in a warning on every start; our
    own session is meant to have it, so the notice is left out (its errors still show)."""
    notice = logging.getLogger(_AUTH_LOGGER)
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(level)


def actor_log_file(job_id: str) -> Path | None:
    """The file the actors of `job_id` log to when they do not stream to this terminal (a local
    Ray started on a terminal); None when their lines reach the driver's stderr."""
    return logs.actor_log_file(job_id) if _actors_log_to_file and ray.is_initialized() else None


def shutdown() -> None:
    """Leave the cluster; a local one that `connect` started ends with all its processes."""
    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:  # a second Ctrl-C inside ray.shutdown() still ends the local Ray
        _end_local()


def _end_local() -> None:
    global _started, _watchdog, _actors_log_to_file
    _actors_log_to_file = False
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
