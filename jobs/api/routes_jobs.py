"""/v1/jobs and /v1/schedules: submit, list, show, cancel, events."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Path, Query, Response

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
from jobs.service import cron
from jobs.service.auth import Principal
from jobs.service.queue import AccessDenied, check_manifest, enqueue, expand_manifest
from jobs.service.store.job_store import IdempotencyConflict, Store, utcnow

log = structlog.get_logger()
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422)}
router = APIRouter(prefix="/v1", responses=ERRORS)
JobId = Annotated[str, Path(min_length=1, max_length=64)]
StoreDep = Annotated[Store, Depends(get_store)]
Who = Annotated[Principal, Depends(principal)]


def _manifest_fields(errors) -> list[tuple[str, str]]:
    return [(f"manifest.{e.path}" if e.path else "manifest", e.message) for e in errors]


@router.post("/jobs", response_model=SubmitResponse, status_code=201,
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
    return {"created": created, "job": JobOut(**job)}


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


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
def list_jobs(store: StoreDep, _who: Who,
              state: JobState | None = None,
              queue: Annotated[str | None, Query(max_length=64)] = None,
              owner: Annotated[str | None, Query(max_length=128)] = None,
              schedule_id: Annotated[str | None, Query(max_length=64)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0):
    rows = store.list_jobs(state=state, queue=queue, owner=owner, schedule_id=schedule_id, limit=limit, offset=offset)
    return {"jobs": [JobOut(**{**r, "manifest": None}) for r in rows]}


def _job_or_404(store: Store, job_id: str) -> dict:
    job = store.get(job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    return job


@router.get("/jobs/{job_id}", response_model=JobOut, summary="One job, with its manifest and progress")
def get_job(job_id: JobId, store: StoreDep, _who: Who):
    return JobOut(**_job_or_404(store, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, status_code=202,
             summary="Cancel a queued or running job (its runner is stopped; committed parts stay)")
def cancel(job_id: JobId, store: StoreDep, who: Who):
    job = _job_or_404(store, job_id)
    if job["owner"] != who.name and not who.admin:
        store.audit(who.name, "cancel", job_id, {"outcome": "forbidden"})
        raise ApiError(403, f"job {job_id} belongs to {job['owner']}; only it (or an admin) may cancel it")
    before = job["state"]
    after = store.request_cancel(job_id)
    store.audit(who.name, "cancel", job_id, {"from": before, "to": after})
    if before.terminal:
        raise ApiError(409, f"job {job_id} already ended ({before})")
    return JobOut(**_job_or_404(store, job_id))


@router.get("/jobs/{job_id}/events", response_model=EventList, summary="A job's event log")
def events(job_id: JobId, store: StoreDep, _who: Who, after: Annotated[int, Query(ge=0, le=2**62)] = 0,
           limit: Annotated[int, Query(ge=1, le=5000)] = 500):
    job = _job_or_404(store, job_id)
    return {"job_id": job_id, "state": job["state"], "events": store.events(job_id, after=after, limit=limit)}


@router.get("/schedules", response_model=list[ScheduleOut], summary="Cron schedules")
def list_schedules(store: StoreDep, _who: Who):
    return [ScheduleOut(**s) for s in cron.list_all(store)]


@router.delete("/schedules/{schedule_id}", response_model=ScheduleOut, summary="Stop a schedule")
def delete_schedule(schedule_id: Annotated[str, Path(max_length=64)], store: StoreDep, who: Who):
    sch = cron.get(store, schedule_id)
    if sch is None:
        raise ApiError(404, f"no schedule {schedule_id}")
    if sch["owner"] != who.name and not who.admin:
        raise ApiError(403, "only the schedule's owner (or an admin) may stop it")
    cron.disable(store, schedule_id)
    store.audit(who.name, "unschedule", None, {"schedule_id": schedule_id})
    return ScheduleOut(**cron.get(store, schedule_id))
