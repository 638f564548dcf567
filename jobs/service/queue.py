"""The queue: turning a submit request (or a due cron schedule) into a queued job, and choosing
which queued jobs start.

Admission order: priority (high first), then age. A job starts only if its queue is under its
concurrency limit and the cluster has the CPUs/GPUs its workers ask for free right now.
"""

from __future__ import annotations

from cluster.hashing import stable_json_sha256
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from jobs.manifest import parse_manifest
from jobs.manifest.errors import FieldError, ManifestError
from jobs.manifest.uri_fields import check_models
from jobs.service import cron
from jobs.service.auth import Principal, principal_by_name, uri_violations
from jobs.service.store.job_store import IdempotencyConflict, NewJob, Store, utcnow

log = structlog.get_logger()

DEFAULT_QUEUE_LIMIT = 4


class AccessDenied(Exception):
    """The caller's token may not read or write some of the manifest's locations."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

    def __reduce__(self):  # pickled like every exception of ours: rebuild from the same arguments
        return (type(self), (self.errors,))


def request_hash(request: dict) -> str:
    return stable_json_sha256(request)


def expand_manifest(manifest: dict, *, when: datetime, run_id: str) -> dict:
    """The manifest with {date}/{datetime}/{run_id} filled in its output URI."""
    out = manifest.get("output")
    if not isinstance(out, dict) or not isinstance(out.get("uri"), str):
        return manifest
    return {**manifest, "output": {**out, "uri": cron.expand_uri(out["uri"], when=when, run_id=run_id)}}


def check_manifest(principal: Principal, manifest: dict, source: str = "manifest"):
    """Parse (ManifestError, field paths relative to the manifest), check every location it names
    against the token's scope (AccessDenied), then that its model references can be loaded
    (ManifestError). Scope first: a path outside the scope is never looked at."""
    parsed = parse_manifest(manifest, source)
    denied = uri_violations(principal, parsed)
    if denied:
        raise AccessDenied([FieldError(path, msg) for path, msg in denied])
    return check_models(parsed, source)


def _resources(parsed) -> tuple[float, float]:
    res = getattr(parsed, "resources", None)
    if res is None:
        return 1.0, 0.0
    workers = getattr(res, "workers", 1) or 1
    return workers * float(getattr(res, "cpus_per_worker", 1.0)), workers * float(getattr(res, "gpus_per_worker", 0.0))


def enqueue(store: Store, principal: Principal, request: dict, *, when: datetime | None = None,
            schedule_id: str | None = None, idempotency_key: str | None = None) -> tuple[dict, bool]:
    """Validate and record one job; the same idempotency key returns the first job."""
    when = when or utcnow()
    key = idempotency_key or request.get("idempotency_key")
    job = NewJob(name="", owner=principal.name, manifest={}, request_hash=request_hash(request),
                 queue=request.get("queue", "default"), priority=request.get("priority", 0),
                 idempotency_key=key, max_attempts=request.get("max_attempts", 1),
                 retry_backoff_s=request.get("retry_backoff_s", 10.0), timeout_s=request.get("timeout_s"),
                 schedule_id=schedule_id, scheduled_for=when if schedule_id else None)
    if key:  # answer a repeat before any work (and even if the manifest would now be refused)
        existing = store.find_by_key(principal.name, key)
        if existing is not None:
            if existing["request_hash"] != job.request_hash:
                raise IdempotencyConflict(existing["id"])
            return existing, False
    manifest = expand_manifest(request["manifest"], when=when, run_id=job.id)
    parsed = check_manifest(principal, manifest)
    job.name, job.manifest = parsed.name, manifest
    job.cpus, job.gpus = _resources(parsed)
    return store.submit(job)


def enqueue_schedule_runs(store: Store) -> None:
    """Queue one job for each cron schedule that is due, as its owner's token allows now."""
    for sch, period in cron.due_runs(store):
        slog = log.bind(schedule_id=sch["id"])
        principal = principal_by_name(store, sch["owner"])
        if principal is None:
            slog.warning("schedule.owner_token_gone", owner=sch["owner"])
            continue
        try:
            job, created = enqueue(store, principal, sch["request"], when=period,
                                   schedule_id=sch["id"], idempotency_key=cron.run_key(sch["id"], period))
        except Exception as exc:
            slog.error("schedule.run_refused", error=str(exc))
            continue
        slog.info("schedule.run_queued", job_id=job["id"], created=created, period=period.isoformat())


@dataclass
class Admission:
    """Decides which queued jobs may start now. `limits` maps queue -> max running jobs."""

    limits: dict[str, int] = field(default_factory=dict)
    default_limit: int = DEFAULT_QUEUE_LIMIT

    def pick(self, queued: list[dict], running_per_queue: dict[str, int],
             free: dict[str, float]) -> list[dict]:
        running = dict(running_per_queue)
        cpus, gpus = free.get("CPU", 0.0), free.get("GPU", 0.0)
        chosen = []
        for job in queued:  # already best-first
            q = job["queue"]
            if running.get(q, 0) >= self.limits.get(q, self.default_limit):
                continue
            # A big job at the head does not block smaller ones behind it (no reservation);
            # priority still decides who goes first among jobs that fit.
            if job["cpus"] > cpus + 1e-9 or job["gpus"] > gpus + 1e-9:
                continue
            cpus -= job["cpus"]
            gpus -= job["gpus"]
            running[q] = running.get(q, 0) + 1
            chosen.append(job)
        return chosen


def parse_limits(items: list[str]) -> dict[str, int]:
    """`--queue-limit NAME=N` flags -> {NAME: N}."""
    out = {}
    for item in items:
        name, _, n = item.partition("=")
        if not name or not n.isdigit():
            raise ValueError(f"--queue-limit wants NAME=N, got {item!r}")
        out[name] = int(n)
    return out


__all__ = ["enqueue", "enqueue_schedule_runs", "Admission", "AccessDenied", "ManifestError", "expand_manifest",
           "parse_limits"]
