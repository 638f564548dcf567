"""The scheduler's side of the store: claims and leases, progress, and how runs end.

Every change is one conditional UPDATE plus its event in the same transaction: `claim` moves a
job queued -> running for exactly one caller; only the lease holder may renew, progress or
finish a job; a lapsed lease (its scheduler died or hung) lets another process adopt it.
State changes go through jobs/service/store/transitions.py (the lifecycle's guard).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from jobs.lifecycle import RUNNER_STATES, JobState, shards_finished
from jobs.service.store.counted import raised
from jobs.service.store.tables import event_row as _event
from jobs.service.store.tables import jobs, utcnow
from jobs.service.store.transitions import guarded_update, refuse_illegal


class LeaseOps:
    """Mixed into jobs.service.store.job_store.Store (which provides `self.engine`)."""

    def claim(self, job_id: str, owner: str, lease_s: float) -> dict | None:
        """queued -> running for exactly one caller; returns the claimed job or None."""
        now = utcnow()
        with self.engine.begin() as conn:
            claimed = guarded_update(conn, job_id, JobState.RUNNING, among=(JobState.QUEUED,),
                                     attempts=jobs.c.attempts + 1, lease_owner=owner,
                                     lease_until=now + timedelta(seconds=lease_s), started_at=now, not_before=None)
            if not claimed:
                return None
            row = dict(conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one())
            _event(conn, job_id, "state", JobState.RUNNING, f"attempt {row['attempts']} started",
                   {"scheduler": owner})
        return row

    def take_over(self, job_id: str, owner: str, lease_s: float, *, dead_owner: str | None = None) -> dict | None:
        """Adopt a running job whose previous scheduler's lease ran out (it died or hung), or
        whose scheduler is known dead (`dead_owner`: a process on this host that is gone)."""
        now = utcnow()
        lapsed = (jobs.c.lease_until < now) | (jobs.c.lease_owner == owner) | jobs.c.lease_until.is_(None)
        if dead_owner is not None:
            lapsed = lapsed | (jobs.c.lease_owner == dead_owner)
        with self.engine.begin() as conn:
            n = conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_(RUNNER_STATES), lapsed)
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s))
            ).rowcount
            if n != 1:
                return None
            return dict(conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one())

    def renew_leases(self, owner: str, lease_s: float, job_ids: set[str]) -> set[str]:
        """Extend this scheduler's leases on the jobs it is watching; returns those it still holds.
        A job it holds but no longer watches (a start that failed) lapses and is adopted."""
        if not job_ids:
            return set()
        mine = (jobs.c.lease_owner == owner) & jobs.c.state.in_(RUNNER_STATES) & jobs.c.id.in_(job_ids)
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(mine).values(lease_until=utcnow() + timedelta(seconds=lease_s)))
            rows = conn.execute(select(jobs.c.id).where(mine)).all()
        return {r[0] for r in rows}

    def orphans(self, *, owner_prefix: str | None = None) -> list[dict]:
        """Running or cancelling jobs whose lease has run out, or (with owner_prefix) whose
        lease is held by a scheduler named with that prefix."""
        lapsed = (jobs.c.lease_until < utcnow()) | jobs.c.lease_until.is_(None)
        if owner_prefix is not None:
            lapsed = lapsed | jobs.c.lease_owner.startswith(owner_prefix, autoescape=True)
        q = select(jobs).where(jobs.c.state.in_(RUNNER_STATES), lapsed)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def finish(self, job_id: str, owner: str, to_state: JobState | str, *, message: str, error: str | None = None,
               summary: dict | None = None, output_uri: str | None = None, not_before: datetime | None = None,
               event_kind: str = "state", failed_run: bool = False) -> bool:
        """End this scheduler's hold on a job: a terminal state, or back to queued (retry or
        requeue after its runner was lost). Only the lease holder can do it (False otherwise);
        a move the lifecycle forbids from the job's current state raises IllegalTransition."""
        to_state = JobState(to_state)
        values: dict[str, Any] = {"lease_owner": None, "lease_until": None}
        if to_state.terminal:
            values["finished_at"] = utcnow()
        if to_state == JobState.QUEUED:
            values["not_before"] = not_before
        if failed_run:
            values["failures"] = jobs.c.failures + 1
        for key, val in (("error", error), ("summary", summary), ("output_uri", output_uri)):
            if val is not None:
                values[key] = val
        held = jobs.c.lease_owner == owner
        with self.engine.begin() as conn:
            if summary is not None:
                values["counted"] = raised(_counted(conn, job_id, held), summary)
            if not guarded_update(conn, job_id, to_state, among=RUNNER_STATES, where=[held], **values):
                if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id, held)).first() is not None:
                    refuse_illegal(conn, job_id, to_state)  # still ours: the state forbade the move
                return False
            _event(conn, job_id, event_kind, to_state, message, {"error": error} if error else None)
            if error and to_state not in (JobState.QUEUED, JobState.PARTIAL):  # partial: its event says why
                _event(conn, job_id, "error", to_state, error)
        return True

    def set_progress(self, job_id: str, owner: str, progress: dict, *, event: bool) -> None:
        held = jobs.c.lease_owner == owner
        with self.engine.begin() as conn:
            counted = raised(_counted(conn, job_id, held), progress)
            conn.execute(update(jobs).where(jobs.c.id == job_id, held).values(progress=progress, counted=counted))
            if event:
                msg = f"{shards_finished(progress)}/{progress.get('shards_total', 0)} shards"
                _event(conn, job_id, "progress", None, msg, progress)

    def queued_ready(self, limit: int = 200) -> list[dict]:
        """Queued jobs whose retry backoff has passed, best first: priority, then age."""
        now = utcnow()
        q = (select(jobs).where(jobs.c.state == JobState.QUEUED,
                               (jobs.c.not_before.is_(None)) | (jobs.c.not_before <= now))
             .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def running_per_queue(self) -> dict[str, int]:
        q = (select(jobs.c.queue, func.count()).where(jobs.c.state.in_(RUNNER_STATES))
             .group_by(jobs.c.queue))
        with self.engine.connect() as conn:
            return {queue: n for queue, n in conn.execute(q).all()}


def _counted(conn, job_id: str, held) -> dict | None:
    """The job's counted figures, its row locked until the transaction ends (PostgreSQL)."""
    row = conn.execute(select(jobs.c.counted).where(jobs.c.id == job_id, held).with_for_update()).first()
    return row[0] if row else None
