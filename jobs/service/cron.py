"""Cron schedules: a stored submit request that the job scheduler turns into one job per period.

Each run's idempotency key names its period, so two service processes (or a restart between
creating the job and advancing the schedule) never start one period twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from croniter import croniter
from sqlalchemy import insert, select, update

from jobs.lifecycle import ACTIVE_STATES
from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import jobs, schedules

log = structlog.get_logger()

# A period whose time passed more than this long ago was missed (the service was down).
MISSED_AFTER_S = 60.0


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


def list_all(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(schedules).order_by(schedules.c.created_at)).mappings()]


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
            log.info("schedule.missed_skipped", schedule_id=sch["id"], period=period.isoformat())
            continue
        if _has_active_run(store, sch["id"]):
            log.info("schedule.overlap_skipped", schedule_id=sch["id"], period=period.isoformat())
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


def _has_active_run(store: Store, schedule_id: str) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(select(jobs.c.id).where(jobs.c.schedule_id == schedule_id,
                                                    jobs.c.state.in_(ACTIVE_STATES)).limit(1)).first() is not None


def run_key(schedule_id: str, period: datetime) -> str:
    return f"schedule:{schedule_id}:{period.strftime('%Y%m%dT%H%M%SZ')}"
