"""job figures for /metrics: the most of each figure (rows, error rows, tokens, shard latency
histogram) a job has reported, kept never lower, so the sums over jobs never drop

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs recorded before it have none (NULL): /metrics takes their summary or progress instead.
    op.add_column("jobs", sa.Column("counted", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("counted")
