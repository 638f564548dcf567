"""token lifecycle: expiry and last use on tokens; an index to page the audit log by actor

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite rebuilds the table, PostgreSQL gets plain ALTERs.
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(), nullable=True))
    op.create_index("ix_audit_log_actor", "audit_log", ["actor", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_actor", table_name="audit_log")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
