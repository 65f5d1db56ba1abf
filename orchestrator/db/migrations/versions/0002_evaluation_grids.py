"""Evaluation grids: runs get a grid name, a token budget, a planned size, a tenant and a Ray job; results
their sequential tokens, difficulty level and request id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 17:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("budget", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("planned", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_eval_runs_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_runs_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_runs_job_id"), ["job_id"], unique=False)
        batch_op.create_foreign_key("fk_eval_runs_tenant_id_tenants", "tenants", ["tenant_id"], ["id"], ondelete="SET NULL")
    with op.batch_alter_table("eval_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sequential_tokens", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("level", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("eval_results", schema=None) as batch_op:
        batch_op.drop_column("request_id")
        batch_op.drop_column("level")
        batch_op.drop_column("sequential_tokens")
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_eval_runs_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_eval_runs_job_id"))
        batch_op.drop_index(batch_op.f("ix_eval_runs_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_eval_runs_name"))
        batch_op.drop_column("job_id")
        batch_op.drop_column("tenant_id")
        batch_op.drop_column("planned")
        batch_op.drop_column("budget")
        batch_op.drop_column("name")
