"""Cron schedules: a stored submit request that the job scheduler turns into one job per period.

Each run's idempotency key names its period, so two service processes (or a restart between
creating the job and advancing the schedule) never start one period twice. A period that is not
run (its previous run still going, or missed with `on_missed: skip`) is recorded where the owner
can read it: an event of kind "schedule" on the schedule's newest job (the one still running),
or, before the schedule's first job, an audit line in the owner's name; `skipped_runs` reads both.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from croniter import croniter
from sqlalchemy import insert, select, update

from jobs.lifecycle import ACTIVE_STATES
from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import audit_log, job_events, jobs, schedules

log = structlog.get_logger()

# A period whose time passed more than this long ago was missed (the service was down).
MISSED_AFTER_S = 60.0
SKIP_EVENT = "schedule"  # job_events.kind of a skipped period
SKIP_AUDIT = "schedule_skip"  # audit_log.action of one skipped before the schedule's first job


def valid_cron(expr: str) -> bool:
    return croniter.is_valid(expr)


def next_after(expr: str, when: datetime) -> datetime:
    return croniter(expr, when).get_next(datetime)


def expand_uri(template: str, *, when: datetime, run_id: str) -> str:
    """Fill {date}, {datetime} and {run_id}; any other braces are left as written."""
    return (template.replace("{date}", when.strftime("%Y-%m-%d"))
            .replace("{datetime}", when.strftime("%Y%m%dT%H%M%SZ"))
            .replace("{run_id}", run_id))


def create(store: Store, *, name: str, owner: str, cron: str, on_missed: str, request: dict,
           idempotency_key: str | None = None) -> tuple[dict, bool]:
    if idempotency_key:
        existing = find_by_key(store, owner, idempotency_key)
        if existing:
            return existing, False
    now = utcnow()
    row = {"id": "sch-" + uuid.uuid4().hex[:16], "name": name, "owner": owner, "cron": cron,
           "on_missed": on_missed, "request": request, "enabled": True,
           "next_run_at": next_after(cron, now), "created_at": now, "idempotency_key": idempotency_key}
    with store.engine.begin() as conn:
        conn.execute(insert(schedules).values(**row))
    return get(store, row["id"]), True


def find_by_key(store: Store, owner: str, key: str) -> dict | None:
    with store.engine.connect() as conn:
        r = conn.execute(select(schedules).where(schedules.c.owner == owner,
                                                 schedules.c.idempotency_key == key)).mappings().first()
    return dict(r) if r else None


def get(store: Store, schedule_id: str) -> dict | None:
    with store.engine.connect() as conn:
        r = conn.execute(select(schedules).where(schedules.c.id == schedule_id)).mappings().first()
    return dict(r) if r else None


def list_all(store: Store, owner: str | None = None) -> list[dict]:
    """Every schedule, oldest first; only `owner`'s when given."""
    q = select(schedules).order_by(schedules.c.created_at)
    if owner is not None:
        q = q.where(schedules.c.owner == owner)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def disable(store: Store, schedule_id: str) -> bool:
    with store.engine.begin() as conn:
        return conn.execute(update(schedules).where(schedules.c.id == schedule_id)
                            .values(enabled=False)).rowcount == 1


def due_runs(store: Store, now: datetime | None = None) -> list[tuple[dict, datetime]]:
    """Advance every due schedule by one step; returns (schedule, period) for each run to start.

    The advance is a conditional update on next_run_at, so of two processes only one wins a
    period. A period missed while the service was down runs once (the newest one) or is skipped,
    by the schedule's on_missed; a period whose previous run is still active is skipped.
    """
    now = now or utcnow()
    with store.engine.connect() as conn:
        due = [dict(r) for r in conn.execute(select(schedules).where(
            schedules.c.enabled.is_(True), schedules.c.next_run_at <= now)).mappings()]
    runs = []
    for sch in due:
        period = _latest_period(sch["cron"], sch["next_run_at"], now)
        missed = (now - period).total_seconds() > MISSED_AFTER_S
        with store.engine.begin() as conn:
            won = conn.execute(update(schedules).where(
                schedules.c.id == sch["id"], schedules.c.next_run_at == sch["next_run_at"])
                .values(next_run_at=next_after(sch["cron"], now), last_run_at=period)).rowcount
        if not won:
            continue
        if missed and sch["on_missed"] == "skip":
            _record_skip(store, sch, period, "missed", _newest_run(store, sch["id"]))
            continue
        active = _newest_run(store, sch["id"], active=True)
        if active is not None:
            _record_skip(store, sch, period, "overlap", active)
            continue
        runs.append((sch, period))
    return runs


def _latest_period(expr: str, first_due: datetime, now: datetime) -> datetime:
    """The newest period time <= now, starting from the first one not yet run."""
    period, it = first_due, croniter(expr, first_due)
    for _ in range(100_000):  # a minutely cron missed for ~2 months is still bounded
        nxt = it.get_next(datetime)
        if nxt > now:
            break
        period = nxt
    return period


def _newest_run(store: Store, schedule_id: str, *, active: bool = False) -> str | None:
    """The id of the schedule's newest job (only among queued and running ones if `active`)."""
    q = select(jobs.c.id).where(jobs.c.schedule_id == schedule_id)
    if active:
        q = q.where(jobs.c.state.in_(ACTIVE_STATES))
    with store.engine.connect() as conn:
        return conn.execute(q.order_by(jobs.c.created_at.desc()).limit(1)).scalar()


def _record_skip(store: Store, sch: dict, period: datetime, reason: str, job_id: str | None) -> None:
    why = (f"the previous run {job_id} is still {_state(store, job_id)}" if reason == "overlap"
           else "the service was down at that time (on_missed: skip)")
    message = f"schedule {sch['id']}: run for {period:%Y-%m-%d %H:%M} UTC skipped: {why}"
    data = {"schedule_id": sch["id"], "period": period.isoformat(), "reason": reason}
    log.info("schedule.skipped", job_id=job_id, **data)
    if job_id is not None:
        store.add_event(job_id, SKIP_EVENT, message, data=data)
    else:  # no job yet to hang it on: the owner's audit line (no new table for this)
        store.audit(sch["owner"], SKIP_AUDIT, None, {**data, "message": message})


def _state(store: Store, job_id: str) -> str:
    job = store.get(job_id)
    return str(job["state"].value) if job else "running"


def skipped_runs(store: Store, sch: dict, limit: int = 20) -> list[dict]:
    """The schedule's newest skipped periods: {at, period, reason, job_id, message}, newest first."""
    q = (select(job_events.c.at, job_events.c.job_id, job_events.c.message, job_events.c.data)
         .join(jobs, jobs.c.id == job_events.c.job_id)
         .where(jobs.c.schedule_id == sch["id"], job_events.c.kind == SKIP_EVENT)
         .order_by(job_events.c.seq.desc()).limit(limit))
    audit_q = (select(audit_log.c.at, audit_log.c.detail).where(
        audit_log.c.action == SKIP_AUDIT, audit_log.c.actor == sch["owner"])
        .order_by(audit_log.c.seq.desc()).limit(10 * limit))
    with store.engine.connect() as conn:
        found = [_skip_row(r["at"], r["job_id"], r["message"], r["data"]) for r in conn.execute(q).mappings()]
        for r in conn.execute(audit_q).mappings():
            detail = r["detail"] or {}
            if detail.get("schedule_id") == sch["id"]:
                found.append(_skip_row(r["at"], None, detail.get("message"), detail))
    return sorted(found, key=lambda row: row["at"], reverse=True)[:limit]


def _skip_row(at: datetime, job_id: str | None, message: str | None, data: dict | None) -> dict:
    data = data or {}
    return {"at": at, "period": data.get("period"), "reason": data.get("reason"), "job_id": job_id,
            "message": message}


def run_key(schedule_id: str, period: datetime) -> str:
    return f"schedule:{schedule_id}:{period.strftime('%Y%m%dT%H%M%SZ')}"
