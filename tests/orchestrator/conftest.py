"""Database tests run on both backends: SQLite (a file per test) and a real PostgreSQL server."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from orchestrator.db.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield Store.from_url(f"sqlite:///{tmp_path / 'q.db'}")
        return
    url = request.getfixturevalue("postgres_url")
    s = Store.from_url(url)
    yield s
    with s.engine.begin() as conn:  # leave an empty database for the next test
        conn.execute(text("TRUNCATE tenants, api_keys, quota_usage, requests, subcalls, prices, calibration_sets, eval_runs, eval_results, servers CASCADE"))
    s.engine.dispose()


