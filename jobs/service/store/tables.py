"""The control plane's tables (SQLAlchemy Core). The Alembic migrations beside this file own the DDL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
)
from sqlalchemy.types import TypeDecorator

from jobs.lifecycle import JobState

metadata = MetaData()


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC and read back timezone-aware, the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class JobStateColumn(TypeDecorator):
    """A job state stored as its string and read back as a `JobState`; a name the lifecycle does
    not know is refused before it reaches the database."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else JobState(value).value

    def process_result_value(self, value, dialect):
        return None if value is None else JobState(value)


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("owner", String(128), nullable=False),
    Column("state", JobStateColumn(), nullable=False),
    Column("queue", String(64), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    # Unique per owner: a resubmission with the same key returns the same job.
    Column("idempotency_key", String(200), nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("manifest", JSON, nullable=False),  # placeholders already expanded
    Column("cpus", Float, nullable=False, default=0.0),  # what admission reserves
    Column("gpus", Float, nullable=False, default=0.0),
    Column("max_attempts", Integer, nullable=False, default=1),
    Column("attempts", Integer, nullable=False, default=0),  # runs started (any start after the first resumes)
    Column("failures", Integer, nullable=False, default=0),  # failed runs; retries stop at max_attempts
    Column("retry_backoff_s", Float, nullable=False, default=10.0),
    Column("timeout_s", Float, nullable=True),
    Column("schedule_id", String(40), nullable=True),
    Column("scheduled_for", UTCDateTime(), nullable=True),
    Column("not_before", UTCDateTime(), nullable=True),  # retry backoff
    # Which scheduler process drives the job now, and until when that claim holds.
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("progress", JSON, nullable=True),  # the last JobProgress, as a dict
    Column("counted", JSON, nullable=True),  # the most of each figure /metrics sums (counted.py), never lower
    Column("summary", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("output_uri", Text, nullable=True),
    UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    Index("ix_jobs_state_queue", "state", "queue"),
    Index("ix_jobs_schedule", "schedule_id"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(32), nullable=False),  # state, progress, error, retry, info
    Column("state", JobStateColumn(), nullable=True),
    Column("message", Text, nullable=True),
    Column("data", JSON, nullable=True),
    Index("ix_job_events_job", "job_id", "seq"),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("owner", String(128), nullable=False),
    Column("cron", String(120), nullable=False),
    Column("on_missed", String(16), nullable=False),  # run_once | skip
    Column("request", JSON, nullable=False),  # the submit request, placeholders unexpanded
    Column("enabled", Boolean, nullable=False, default=True),
    Column("next_run_at", UTCDateTime(), nullable=False),
    Column("last_run_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("idempotency_key", String(200), nullable=True),
    UniqueConstraint("owner", "idempotency_key", name="uq_schedules_owner_idempotency_key"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 of the secret
    Column("input_prefixes", JSON, nullable=False),
    Column("output_prefixes", JSON, nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),  # None: never
    Column("last_used_at", UTCDateTime(), nullable=True),  # written at most once a minute
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),  # submit, cancel, schedule, token_create, token_revoke
    Column("job_id", String(40), nullable=True),
    Column("detail", JSON, nullable=True),
    Index("ix_audit_log_actor", "actor", "seq"),
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def event_row(conn, job_id: str, kind: str, state: JobState | None, message: str | None, data: Any = None) -> None:
    conn.execute(insert(job_events).values(job_id=job_id, at=utcnow(), kind=kind, state=state,
                                           message=message, data=data))
