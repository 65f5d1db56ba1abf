"""Schema migrations (Alembic), run programmatically against any SQLAlchemy engine.

    python -m orchestrator.db.migrate upgrade [--url URL]     # to the newest schema (default: the service's database)
    python -m orchestrator.db.migrate downgrade base           # drop everything the migrations created
    python -m orchestrator.db.migrate revision -m "message"    # autogenerate a new migration from the models
"""

from __future__ import annotations

from pathlib import Path

import typer
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(connection) -> Config:  # noqa: ANN001 - a SQLAlchemy connection
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


MIGRATION_LOCK = 746_515_001  # PostgreSQL advisory lock key: one upgrader at a time


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several API replicas starting at once on an empty database would race to create the same tables.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        command.upgrade(_config(conn), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


cli = typer.Typer(add_completion=False, help=__doc__)


def _engine(url: str | None) -> Engine:
    if url is None:
        from orchestrator.config import get_settings

        url = get_settings().database
    return create_engine(url)


@cli.command("upgrade")
def upgrade_cmd(revision: str = typer.Argument("head"), url: str | None = typer.Option(None, help="SQLAlchemy URL")) -> None:
    upgrade(_engine(url), revision)


@cli.command("downgrade")
def downgrade_cmd(revision: str = typer.Argument("base"), url: str | None = typer.Option(None, help="SQLAlchemy URL")) -> None:
    downgrade(_engine(url), revision)


@cli.command("revision")
def revision_cmd(message: str = typer.Option(..., "-m"), url: str | None = typer.Option(None, help="SQLAlchemy URL")) -> None:
    engine = _engine(url)
    with engine.begin() as conn:
        command.revision(_config(conn), message=message, autogenerate=True)


if __name__ == "__main__":
    cli()
