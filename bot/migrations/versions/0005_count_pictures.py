"""Quotas and usage count pictures, not jobs: each job records how many pictures it asks for, and the per-day
counters sum those.

Revision ID: 0005
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

# The states that count against quotas when this migration was written (bot/storage.py, LedgerState.counted).
COUNTED = ("waiting", "pending", "queued", "running", "completed", "undeliverable")

# A job's `count` as the bot wrote it into `params` (1-4); anything else (missing, not a number, absurd) stays 1.
# The guards come before the cast, so no row can make it fail and stop the bot from starting.
BACKFILL = {
    "sqlite": (
        "UPDATE jobs SET pictures = CAST(json_extract(params, '$.count') AS INTEGER) "
        "WHERE json_valid(params) AND json_type(params, '$.count') = 'integer' "
        "AND json_extract(params, '$.count') BETWEEN 1 AND 100"
    ),
    "postgresql": (
        # CASE, since PostgreSQL may evaluate the parts of an AND in any order.
        "UPDATE jobs SET pictures = CAST(params ->> 'count' AS INTEGER) "
        "WHERE CASE WHEN json_typeof(params -> 'count') = 'number' AND (params ->> 'count') ~ '^[0-9]{1,3}$' "
        "THEN CAST(params ->> 'count' AS INTEGER) BETWEEN 1 AND 100 ELSE false END"
    ),
}


def _jobs() -> Any:
    return sa.table(
        "jobs",
        sa.column("guild_id", sa.BigInteger),
        sa.column("user_id", sa.BigInteger),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("state", sa.String),
        sa.column("execution_ms", sa.Integer),
        sa.column("pictures", sa.Integer),
    )


def _day(jobs: Any) -> Any:
    """The UTC day of `created_at`, on either database."""
    if op.get_bind().dialect.name == "sqlite":
        return sa.func.date(jobs.c.created_at)  # stored in UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'
    return sa.cast(sa.func.timezone("UTC", jobs.c.created_at), sa.Date)


def _usage_days(counter: str) -> Any:
    table = op.create_table(
        "usage_days",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column(counter, sa.Integer, nullable=False),
        sa.Column("gpu_ms", sa.BigInteger, nullable=False),
    )
    assert table is not None
    return table


def _fill(usage_days: Any, counter: str, counted: Any) -> None:
    jobs = _jobs()
    day = _day(jobs)
    summed = (
        sa.select(
            jobs.c.guild_id,
            day,
            jobs.c.user_id,
            counted(jobs),
            sa.func.coalesce(sa.func.sum(sa.func.coalesce(jobs.c.execution_ms, 0)), 0),
        )
        .where(jobs.c.guild_id.is_not(None), jobs.c.state.in_(COUNTED))
        .group_by(jobs.c.guild_id, day, jobs.c.user_id)
    )
    op.execute(sa.insert(usage_days).from_select(["guild_id", "day", "user_id", counter, "gpu_ms"], summed))


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pictures", sa.Integer, nullable=False, server_default="1"))
    op.execute(BACKFILL[op.get_bind().dialect.name])
    # The counters are summed afresh (a count of jobs becomes a sum of pictures); renaming the column alone
    # would keep the old figures.
    op.drop_table("usage_days")
    _fill(_usage_days("pictures"), "pictures", lambda jobs: sa.func.sum(jobs.c.pictures))


def downgrade() -> None:
    op.drop_table("usage_days")
    _fill(_usage_days("jobs"), "jobs", lambda jobs: sa.func.count())
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pictures")
