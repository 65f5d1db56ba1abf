"""Cancel requests across API replicas: ``requests.cancel_requested_at`` is set by whichever server a
DELETE reaches and acted on by the server running the request.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 08:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested_at")
