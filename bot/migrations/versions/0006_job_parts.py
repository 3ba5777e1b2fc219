"""A request may run as several RunPod jobs (its parts), when the worker makes fewer pictures per job than asked:
the first part's id stays in `runpod_job_id`, the others are listed in `more_job_ids` (a JSON list).

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("more_job_ids", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("more_job_ids")
