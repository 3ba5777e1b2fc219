"""Guild settings and the job ledger.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("endpoint_id", sa.String(128), nullable=False),
        sa.Column("api_key_encrypted", sa.Text, nullable=False),
        sa.Column("worker", sa.String(16), nullable=False),
        sa.Column("workflow", sa.Text),
        sa.Column("updated_by", sa.BigInteger),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("request_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("runpod_job_id", sa.String(128), unique=True),
        sa.Column("guild_id", sa.BigInteger, index=True),
        sa.Column("channel_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("user_name", sa.String(100), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("endpoint_id", sa.String(128), nullable=False),
        sa.Column("worker", sa.String(16), nullable=False),
        sa.Column("key_source", sa.String(8), nullable=False),
        sa.Column("token_encrypted", sa.Text),
        sa.Column("token_expires_at", sa.DateTime(timezone=True)),
        sa.Column("message_id", sa.BigInteger),
        sa.Column("channel_message_id", sa.BigInteger),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("notice", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("guild_settings")
