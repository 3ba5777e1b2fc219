"""Several named endpoints ("models") per guild, each guild's policy, and which model a job used.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "guild_endpoints",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("endpoint_id", sa.String(128), nullable=False),
        sa.Column("api_key_encrypted", sa.Text, nullable=False),
        sa.Column("worker", sa.String(16), nullable=False),
        sa.Column("workflow", sa.Text),
        sa.Column("updated_by", sa.BigInteger),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Each guild's one endpoint so far becomes its model "default".
    op.execute(
        "INSERT INTO guild_endpoints (guild_id, name, endpoint_id, api_key_encrypted, worker, workflow, updated_by, "
        "updated_at) SELECT guild_id, 'default', endpoint_id, api_key_encrypted, worker, workflow, updated_by, "
        "updated_at FROM guild_settings"
    )
    op.drop_table("guild_settings")
    op.create_table(
        "guild_policies",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model", sa.String(32)))
        batch.create_index("ix_jobs_guild_created", ["guild_id", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_guild_created")
        batch.drop_column("model")
    op.drop_table("guild_policies")
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
    op.execute(
        "INSERT INTO guild_settings SELECT guild_id, endpoint_id, api_key_encrypted, worker, workflow, updated_by, "
        "updated_at FROM guild_endpoints WHERE name = 'default'"
    )
    op.drop_table("guild_endpoints")
