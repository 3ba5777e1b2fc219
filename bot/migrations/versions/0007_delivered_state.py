"""A posted job is in its own state, `delivered` (bot/lifecycle.py), instead of `completed` with a delivery time:
`completed` now means its pictures arrived and are being posted.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.execute(sa.text("UPDATE jobs SET state = 'delivered' WHERE state = 'completed' AND delivered_at IS NOT NULL"))


def downgrade() -> None:
    op.execute(sa.text("UPDATE jobs SET state = 'completed' WHERE state = 'delivered'"))
