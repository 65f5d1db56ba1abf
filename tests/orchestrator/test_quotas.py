"""Tenants, hashed API keys, atomic quota charging and concurrency slots, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select

from orchestrator.db import migrate
from orchestrator.db.models import ApiKey, Base


def test_api_keys_are_stored_hashed(store):
    tenant = asyncio.run(store.tenants.create("acme", tokens_per_day=1000))
    key = asyncio.run(store.tenants.create_api_key(tenant))
    with store.session() as s:
        row = s.scalar(select(ApiKey))
    assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64 and key.startswith(row.prefix)
    assert asyncio.run(store.tenants.for_key(key)).id == tenant
    assert asyncio.run(store.tenants.for_key(key + "x")) is None


def test_50_concurrent_reservations_never_exceed_the_quota(store):
    tenant = asyncio.run(store.tenants.create("busy", tokens_per_day=5000))
    with ThreadPoolExecutor(50) as pool:
        grants = list(pool.map(lambda _: asyncio.run(store.tenants.reserve_tokens(tenant, want=300, limit=5000)), range(50)))
    assert sum(grants) == asyncio.run(store.tenants.tokens_used(tenant)) == 5000  # 16 full grants, one partial, the rest 0
    assert sorted(set(grants)) == [0, 200, 300] and grants.count(200) == 1


def test_concurrency_slots_are_taken_atomically(store):
    tenant = asyncio.run(store.tenants.create("few", max_concurrent=3))
    with ThreadPoolExecutor(20) as pool:
        taken = list(pool.map(lambda _: asyncio.run(store.tenants.enter(tenant)), range(20)))
    assert taken.count(True) == 3
    asyncio.run(store.tenants.leave(tenant))
    assert asyncio.run(store.tenants.enter(tenant)) and not asyncio.run(store.tenants.enter(tenant))
    asyncio.run(store.leases.register("s1"))  # a restart frees every slot its requests held
    assert asyncio.run(store.tenants.enter(tenant))


def test_migrations_on_postgresql(postgres_url):
    engine = create_engine(postgres_url)
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    engine.dispose()
