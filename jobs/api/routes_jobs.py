"""/v1/jobs: submit (a job, or a cron schedule of jobs), list, show, cancel, events.

Listing, showing and stopping schedules is in routes_schedules.py."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from jobs.api.deps import get_store, principal
from jobs.api.errors import ApiError
from jobs.api.models import (
    ErrorResponse,
    EventList,
    JobList,
    JobOut,
    ScheduleOut,
    SubmitRequest,
    SubmitResponse,
)
from jobs.lifecycle import JobState
from jobs.manifest.errors import ManifestError
from jobs.manifest.yaml_text import duplicate_json_keys
from jobs.service import cron
from jobs.service.auth import Principal
from jobs.service.queue import AccessDenied, check_manifest, enqueue, expand_manifest
from jobs.service.store.job_store import IdempotencyConflict, Store, utcnow

log = structlog.get_logger()
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 429)}
router = APIRouter(prefix="/v1", responses=ERRORS)
JobId = Annotated[str, Path(min_length=1, max_length=64)]
StoreDep = Annotated[Store, Depends(get_store)]
Who = Annotated[Principal, Depends(principal)]


def _manifest_fields(errors) -> list[tuple[str, str]]:
    return [(f"manifest.{e.path}" if e.path else "manifest", e.message) for e in errors]


async def _unique_json_keys(request: Request) -> None:
    """JSON parsing keeps the last of two equal keys: a body that has any is refused, not guessed."""
    if dups := duplicate_json_keys(await request.body()):
        raise ApiError(422, "request body is not valid", [(e.path, e.message) for e in dups])


@router.post("/jobs", response_model=SubmitResponse, status_code=201, dependencies=[Depends(_unique_json_keys)],
             summary="Submit a job (or a cron schedule of jobs)")
def submit(body: SubmitRequest, response: Response, store: StoreDep,
           who: Who):
    request = body.model_dump(mode="json", exclude={"schedule"}, exclude_none=True)
    try:
        if body.schedule is not None:
            return _submit_schedule(store, who, body, request, response)
        job, created = enqueue(store, who, request)
    except ManifestError as exc:
        store.audit(who.name, "submit", None, {"outcome": "invalid", "errors": len(exc.errors)})
        raise ApiError(422, "manifest is not valid", _manifest_fields(exc.errors)) from None
    except AccessDenied as exc:
        store.audit(who.name, "submit", None, {"outcome": "forbidden"})
        raise ApiError(403, "the token may not use these locations", _manifest_fields(exc.errors)) from None
    except IdempotencyConflict as exc:
        store.audit(who.name, "submit", str(exc), {"outcome": "conflict"})
        raise ApiError(409, f"idempotency_key was already used for a different request (job {exc})",
                       [("idempotency_key", "used before with a different request")]) from None
    store.audit(who.name, "submit", job["id"], {"outcome": "created" if created else "existing",
                                                "name": job["name"], "queue": job["queue"]})
    if not created:
        response.status_code = 200
    return {"created": created, "job": JobOut.of(job)}


def _submit_schedule(store: Store, who: Principal, body: SubmitRequest, request: dict, response: Response):
    # Check the manifest now, as its first run would see it, so a bad schedule is refused at once.
    check_manifest(who, expand_manifest(body.manifest, when=utcnow(), run_id="check"))
    sch, created = cron.create(store, name=str(body.manifest.get("name")), owner=who.name,
                                    cron=body.schedule.cron, on_missed=body.schedule.on_missed,
                                    request={k: v for k, v in request.items() if k != "idempotency_key"},
                                    idempotency_key=body.idempotency_key)
    store.audit(who.name, "schedule", None, {"schedule_id": sch["id"], "cron": sch["cron"],
                                             "outcome": "created" if created else "existing"})
    if not created:
        response.status_code = 200
    return {"created": created, "schedule": ScheduleOut(**sch)}


@router.get("/jobs", response_model=JobList, summary="List the caller's jobs (an admin: anyone's), newest first")
def list_jobs(store: StoreDep, who: Who,
              state: JobState | None = None,
              queue: Annotated[str | None, Query(max_length=64)] = None,
              owner: Annotated[str | None, Query(max_length=128)] = None,
              schedule_id: Annotated[str | None, Query(max_length=64)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0):
    if not who.admin:
        if owner is not None and owner != who.name:
            raise ApiError(403, "only an admin may list other owners' jobs", [("query.owner", "not the caller")])
        owner = who.name
    rows = store.list_jobs(state=state, queue=queue, owner=owner, schedule_id=schedule_id, limit=limit, offset=offset)
    return {"jobs": [JobOut.of(r, manifest=False) for r in rows]}


def _job_or_404(store: Store, job_id: str, who: Principal) -> dict:
    """The job if the caller owns it (or is an admin); another tenant's job is 'no job', like a
    missing one, so ids cannot be probed."""
    job = store.get(job_id)
    if job is None or (job["owner"] != who.name and not who.admin):
        raise ApiError(404, f"no job {job_id}")
    return job


@router.get("/jobs/{job_id}", response_model=JobOut, summary="One job, with its manifest and progress")
def get_job(job_id: JobId, store: StoreDep, who: Who):
    return JobOut.of(_job_or_404(store, job_id, who))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, status_code=202,
             summary="Cancel a queued or running job (its runner is stopped; committed parts stay)")
def cancel(job_id: JobId, store: StoreDep, who: Who):
    found = store.get(job_id)
    if found is not None and found["owner"] != who.name and not who.admin:
        store.audit(who.name, "cancel", job_id, {"outcome": "forbidden"})
    job = _job_or_404(store, job_id, who)
    before = job["state"]
    after = store.request_cancel(job_id)
    store.audit(who.name, "cancel", job_id, {"from": before, "to": after})
    if before.terminal:
        raise ApiError(409, f"job {job_id} already ended ({before})")
    return JobOut.of(_job_or_404(store, job_id, who))


@router.get("/jobs/{job_id}/events", response_model=EventList, summary="A job's event log")
def events(job_id: JobId, store: StoreDep, who: Who, after: Annotated[int, Query(ge=0, le=2**62)] = 0,
           limit: Annotated[int, Query(ge=1, le=5000)] = 500):
    job = _job_or_404(store, job_id, who)
    return {"job_id": job_id, "state": job["state"], "events": store.events(job_id, after=after, limit=limit)}
