"""Record each job's queue and run time (RunPod's delayTime and executionTime), and find undelivered jobs fast.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("delay_ms", sa.Integer))
        batch.add_column(sa.Column("execution_ms", sa.Integer))
        batch.create_index("ix_jobs_delivered_at", ["delivered_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_delivered_at")
        batch.drop_column("execution_ms")
        batch.drop_column("delay_ms")
