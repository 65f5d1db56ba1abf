"""Alembic migrations own the schema: they build exactly the models, downgrade cleanly, and rerun safely."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from orchestrator.db import migrate
from orchestrator.db.models import Base
from orchestrator.db.store import Store


def test_upgrade_builds_exactly_the_models_and_downgrade_removes_them(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine)
    assert migrate.current(engine) is not None
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"migrations and models differ: {diff}"
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())

    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert migrate.current(engine) is None
    migrate.upgrade(engine)  # and back up again
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_store_opens_an_up_to_date_database_as_it_is(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store.from_url(url)
    asyncio.run(store.requests.create(request_id="r1", model="m", strategy="s", params={}, prompt="p"))
    again = Store.from_url(url)
    assert asyncio.run(again.requests.get("r1")) is not None


def test_replicas_starting_together_on_an_empty_postgresql_all_come_up(postgres_url):
    from concurrent.futures import ThreadPoolExecutor

    engine = create_engine(postgres_url)
    migrate.downgrade(engine, "base")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: Store.from_url(postgres_url).engine.dispose(), range(4)))  # each runs the upgrade
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    engine.dispose()
