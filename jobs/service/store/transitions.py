"""How the store changes a job's state: only through the lifecycle in jobs/lifecycle.py.

Each change is one UPDATE guarded by `state IN (<the states the lifecycle allows it from>)`, so
a row in any other state is left alone, also when two service processes race on it. Where the
guard misses and the caller still holds the job, the current state is checked against the
lifecycle: a move it forbids raises `IllegalTransition` (inside the transaction, so nothing changes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select, update

from jobs.lifecycle import JobState, allowed_sources, check_transition
from jobs.service.store.tables import jobs


def guarded_update(conn: Connection, job_id: str, target: JobState, *, among: Iterable[JobState] | None = None,
                   where: Iterable[Any] = (), **values: Any) -> bool:
    """Move one job to `target` if its state is one the lifecycle allows (and one of `among`,
    when given) and every extra `where` clause holds; returns whether it moved."""
    sources = allowed_sources(target, among)
    moved = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_(sources), *where)
                         .values(state=target, **values)).rowcount
    return moved == 1


def current_state(conn: Connection, job_id: str) -> JobState | None:
    row = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).first()
    return row[0] if row else None


def refuse_illegal(conn: Connection, job_id: str, target: JobState) -> None:
    """Raise IllegalTransition if the job's current state may not go to `target`."""
    state = current_state(conn, job_id)
    if state is not None:
        check_transition(state, target)
