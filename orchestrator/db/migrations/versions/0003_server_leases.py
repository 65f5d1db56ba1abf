"""Server leases: each API server heartbeats a row in ``servers`` and owns the requests it accepted
(``requests.server_id``), so that a server that died can have its requests finished by any other.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("server_id", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_requests_server_id"), ["server_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_server_id"))
        batch_op.drop_column("server_id")
    op.drop_table("servers")
