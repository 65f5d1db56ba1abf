"""Alembic environment: runs against the connection the caller passes (see orchestrator.db.migrate)."""

from __future__ import annotations

from alembic import context

from orchestrator.db.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through orchestrator.db.migrate, which passes a connection")
    # SQLite cannot ALTER most things in place: batch mode rebuilds tables instead.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
