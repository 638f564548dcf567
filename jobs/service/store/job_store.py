"""The job store: engine and migrations, submit (idempotent), reads, events, audit, cancel.

SQLite file by default, PostgreSQL by URL. Every state change is one conditional UPDATE
(`... WHERE state IN <what the lifecycle allows>`, see transitions.py) plus its event in the
same transaction, so two service processes racing on one job see exactly one winner. The
scheduler's claims and leases are in leases.py.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, func, insert, select
from sqlalchemy.exc import IntegrityError

from jobs.lifecycle import INITIAL_STATE, JobState
from jobs.service.store.leases import LeaseOps
from jobs.service.store.tables import audit_log, job_events, jobs, utcnow
from jobs.service.store.tables import event_row as _event
from jobs.service.store.transitions import current_state, guarded_update

log = structlog.get_logger()


def default_url() -> str:
    """$LLMBATCH_DB, else an SQLite file in the user's data folder."""
    if os.environ.get("LLMBATCH_DB"):
        return os.environ["LLMBATCH_DB"]
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "llmbatch"
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'jobs.db'}"


def _enable_wal(cur) -> None:
    """`PRAGMA journal_mode=WAL` on a new database needs a lock that SQLite may refuse at once,
    without its busy handler, while other connections open the same file (services starting
    together): try again for a while instead of failing the start."""
    deadline = time.monotonic() + 60
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_setup(dbapi_conn, _record):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _begin_immediate).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")
        _enable_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        # Take the write lock up front: a deferred transaction that later upgrades to a writer
        # fails at once with "database is locked" instead of waiting for busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to the newest Alembic revision (run on every service start); tests of a
    migration stop at an older `revision` first."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two services starting together: the second waits, then finds the schema at head.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7311845021)")
        cfg.attributes["connection"] = conn
        alembic_command.upgrade(cfg, revision)


@dataclass
class NewJob:
    name: str
    owner: str
    manifest: dict
    request_hash: str
    queue: str = "default"
    priority: int = 0
    idempotency_key: str | None = None
    cpus: float = 0.0
    gpus: float = 0.0
    max_attempts: int = 1
    retry_backoff_s: float = 10.0
    timeout_s: float | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    id: str = field(default_factory=lambda: "job-" + uuid.uuid4().hex[:16])


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


class Store(LeaseOps):
    def __init__(self, url: str | None = None, *, run_migrations: bool = True):
        self.url = url or default_url()
        self.engine = make_engine(self.url)
        if run_migrations:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ---- submit and read -----------------------------------------------------------------

    def submit(self, job: NewJob) -> tuple[dict, bool]:
        """Record a queued job; returns (job, created). The same idempotency key returns the
        job recorded first, or raises IdempotencyConflict if the request differs."""
        now = utcnow()
        values = {**job.__dict__, "state": INITIAL_STATE, "attempts": 0, "failures": 0, "created_at": now}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(jobs).values(**values))
                _event(conn, job.id, "state", INITIAL_STATE, "submitted",
                       {"queue": job.queue, "priority": job.priority})
            return self.get(job.id), True
        except IntegrityError:
            if job.idempotency_key is None:
                raise
        existing = self.find_by_key(job.owner, job.idempotency_key)
        if existing is None:  # lost the race to a row that was then deleted: impossible here
            raise RuntimeError("idempotency key conflict without a row")
        if existing["request_hash"] != job.request_hash:
            raise IdempotencyConflict(existing["id"])
        return existing, False

    def find_by_key(self, owner: str, key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.owner == owner, jobs.c.idempotency_key == key)
            ).mappings().first()
        return dict(row) if row else None

    def get(self, job_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return dict(row) if row else None

    def list_jobs(self, *, state: JobState | None = None, queue: str | None = None, owner: str | None = None,
                  schedule_id: str | None = None, limit: int = 100, offset: int = 0) -> list[dict]:
        q = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit).offset(offset)
        for col, value in (("state", state), ("queue", queue), ("owner", owner), ("schedule_id", schedule_id)):
            if value is not None:
                q = q.where(jobs.c[col] == value)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def count_by_state(self, owner: str | None = None) -> dict[JobState, int]:
        q = select(jobs.c.state, func.count()).group_by(jobs.c.state)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return {state: n for state, n in rows}

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[dict]:
        q = (select(job_events).where(job_events.c.job_id == job_id, job_events.c.seq > after)
             .order_by(job_events.c.seq).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def add_event(self, job_id: str, kind: str, message: str | None = None, data: Any = None,
                  state: JobState | None = None) -> None:
        with self.engine.begin() as conn:
            _event(conn, job_id, kind, state, message, data)

    def audit(self, actor: str, action: str, job_id: str | None, detail: dict | None = None) -> None:
        log.info("audit", actor=actor, action=action, job_id=job_id, **(detail or {}))
        with self.engine.begin() as conn:
            conn.execute(insert(audit_log).values(at=utcnow(), actor=actor, action=action,
                                                  job_id=job_id, detail=detail))

    def audit_lines(self, limit: int = 100, *, before: int | None = None, actor: str | None = None) -> list[dict]:
        """Newest first; `before` (a seq) pages back through older lines."""
        q = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if before is not None:
            q = q.where(audit_log.c.seq < before)
        if actor is not None:
            q = q.where(audit_log.c.actor == actor)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ---- cancel --------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> JobState | None:
        """queued -> cancelled at once; running -> cancelling (the scheduler stops its runner).
        Returns the job's state afterwards, or None if there is no such job."""
        with self.engine.begin() as conn:
            if guarded_update(conn, job_id, JobState.CANCELLED, among=(JobState.QUEUED,), finished_at=utcnow()):
                _event(conn, job_id, "state", JobState.CANCELLING, "cancel requested while queued")
                _event(conn, job_id, "state", JobState.CANCELLED, "cancelled before it started")
                return JobState.CANCELLED
            if guarded_update(conn, job_id, JobState.CANCELLING, among=(JobState.RUNNING,)):
                _event(conn, job_id, "state", JobState.CANCELLING, "cancel requested")
                return JobState.CANCELLING
            return current_state(conn, job_id)  # already cancelling or ended: nothing to do


__all__ = ["Store", "NewJob", "IdempotencyConflict", "utcnow", "default_url"]
