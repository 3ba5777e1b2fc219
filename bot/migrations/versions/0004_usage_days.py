"""Per-day usage counters (guild, day, member), so a quota check reads days, not the whole month's jobs.

Revision ID: 0004
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

# The states that count against quotas when this migration was written (bot/storage.py, LedgerState.counted).
COUNTED = ("waiting", "pending", "queued", "running", "completed", "undeliverable")


def upgrade() -> None:
    usage_days = op.create_table(
        "usage_days",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("jobs", sa.Integer, nullable=False),
        sa.Column("gpu_ms", sa.BigInteger, nullable=False),
    )
    assert usage_days is not None
    jobs = sa.table(
        "jobs",
        sa.column("guild_id", sa.BigInteger),
        sa.column("user_id", sa.BigInteger),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("state", sa.String),
        sa.column("execution_ms", sa.Integer),
    )
    if op.get_bind().dialect.name == "sqlite":
        day: Any = sa.func.date(jobs.c.created_at)  # stored in UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'
    else:
        day = sa.cast(sa.func.timezone("UTC", jobs.c.created_at), sa.Date)
    summed = (
        sa.select(
            jobs.c.guild_id,
            day,
            jobs.c.user_id,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.func.coalesce(jobs.c.execution_ms, 0)), 0),
        )
        .where(jobs.c.guild_id.is_not(None), jobs.c.state.in_(COUNTED))
        .group_by(jobs.c.guild_id, day, jobs.c.user_id)
    )
    op.execute(sa.insert(usage_days).from_select(["guild_id", "day", "user_id", "jobs", "gpu_ms"], summed))


def downgrade() -> None:
    op.drop_table("usage_days")
