"""initial schema: jobs, job_events, schedules, tokens, audit_log

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copy of the schema at this revision: later model changes get their own revision.
TS = sa.DateTime()
SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("gpus", sa.Float, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("retry_backoff_s", sa.Float, nullable=False),
        sa.Column("timeout_s", sa.Float),
        sa.Column("schedule_id", sa.String(40)),
        sa.Column("scheduled_for", TS),
        sa.Column("not_before", TS),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("progress", sa.JSON),
        sa.Column("summary", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("output_uri", sa.Text),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )
    op.create_index("ix_jobs_state_queue", "jobs", ["state", "queue"])
    op.create_index("ix_jobs_schedule", "jobs", ["schedule_id"])
    op.create_table(
        "job_events",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16)),
        sa.Column("message", sa.Text),
        sa.Column("data", sa.JSON),
    )
    op.create_index("ix_job_events_job", "job_events", ["job_id", "seq"])
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("cron", sa.String(120), nullable=False),
        sa.Column("on_missed", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("next_run_at", TS, nullable=False),
        sa.Column("last_run_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_schedules_owner_idempotency_key"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("input_prefixes", sa.JSON, nullable=False),
        sa.Column("output_prefixes", sa.JSON, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(40)),
        sa.Column("detail", sa.JSON),
    )


def downgrade() -> None:
    for name in ("audit_log", "tokens", "schedules", "job_events", "jobs"):
        op.drop_table(name)
