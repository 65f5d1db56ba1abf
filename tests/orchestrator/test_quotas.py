"""Tenants, hashed API keys, atomic quota charging and concurrency slots, on SQLite and on PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select

from orchestrator.db import migrate
from orchestrator.db.models import ApiKey, Base


def test_api_keys_are_stored_hashed(store):
    tenant = store.create_tenant("acme", tokens_per_day=1000)
    key = store.create_api_key(tenant)
    with store.session() as s:
        row = s.scalar(select(ApiKey))
    assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64 and key.startswith(row.prefix)
    assert store.tenant_for_key(key).id == tenant
    assert store.tenant_for_key(key + "x") is None


def test_50_concurrent_reservations_never_exceed_the_quota(store):
    tenant = store.create_tenant("busy", tokens_per_day=5000)
    with ThreadPoolExecutor(50) as pool:
        grants = list(pool.map(lambda _: store.reserve_tokens(tenant, 300, limit=5000), range(50)))
    assert sum(grants) == store.tokens_used(tenant) == 5000  # 16 full grants, one partial, the rest 0
    assert sorted(set(grants)) == [0, 200, 300] and grants.count(200) == 1


def test_concurrency_slots_are_taken_atomically(store):
    tenant = store.create_tenant("few", max_concurrent=3)
    with ThreadPoolExecutor(20) as pool:
        taken = list(pool.map(lambda _: store.enter(tenant), range(20)))
    assert taken.count(True) == 3
    store.leave(tenant)
    assert store.enter(tenant) and not store.enter(tenant)
    store.register_server("s1")  # a restart frees every slot its requests held
    assert store.enter(tenant)


def test_migrations_on_postgresql(postgres_url):
    engine = create_engine(postgres_url)
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    engine.dispose()
