"""/v1/schedules: list, show (with the recently skipped runs) and stop cron schedules.

Scoped like jobs: a token sees and stops only the schedules it created; another tenant's
schedule answers 404, exactly as one that does not exist, so ids cannot be probed. An admin
token sees and stops all. Schedules are created through POST /v1/jobs with a `schedule`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from jobs.api.deps import get_store, principal
from jobs.api.errors import ApiError
from jobs.api.models import ErrorResponse, ScheduleOut
from jobs.service import cron
from jobs.service.auth import Principal
from jobs.service.store.job_store import Store

router = APIRouter(prefix="/v1", responses={code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 429)})
ScheduleId = Annotated[str, Path(min_length=1, max_length=64)]
StoreDep = Annotated[Store, Depends(get_store)]
Who = Annotated[Principal, Depends(principal)]


class SkippedRun(BaseModel):
    at: datetime
    period: str | None = None
    reason: str | None = None  # overlap (the previous run was still going) | missed (on_missed: skip)
    job_id: str | None = None  # the job whose event log holds it (the run still going)
    message: str | None = None


class ScheduleDetail(ScheduleOut):
    skipped: list[SkippedRun]


def _visible(store: Store, who: Principal, schedule_id: str) -> dict:
    sch = cron.get(store, schedule_id)
    if sch is None or (sch["owner"] != who.name and not who.admin):
        raise ApiError(404, f"no schedule {schedule_id}",
                       [("path.schedule_id", "not a schedule of this token (or none by this id)")])
    return sch


@router.get("/schedules", response_model=list[ScheduleOut], summary="Cron schedules (an admin sees all)")
def list_schedules(store: StoreDep, who: Who, owner: Annotated[str | None, Query(max_length=128)] = None):
    if not who.admin:
        owner = who.name
    return [ScheduleOut(**s) for s in cron.list_all(store, owner=owner)]


@router.get("/schedules/{schedule_id}", response_model=ScheduleDetail,
            summary="One schedule, with its recently skipped runs")
def get_schedule(schedule_id: ScheduleId, store: StoreDep, who: Who,
                 limit: Annotated[int, Query(ge=1, le=200)] = 20):
    sch = _visible(store, who, schedule_id)
    return ScheduleDetail(**sch, skipped=[SkippedRun(**r) for r in cron.skipped_runs(store, sch, limit)])


@router.delete("/schedules/{schedule_id}", response_model=ScheduleOut, summary="Stop a schedule")
def delete_schedule(schedule_id: ScheduleId, store: StoreDep, who: Who):
    _visible(store, who, schedule_id)
    cron.disable(store, schedule_id)
    store.audit(who.name, "unschedule", None, {"schedule_id": schedule_id})
    return ScheduleOut(**cron.get(store, schedule_id))
