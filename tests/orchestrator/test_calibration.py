"""ATTS calibration sets in the database, on SQLite and on PostgreSQL: a bounded window, replaced or appended,
and concurrent online updates that lose nothing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from orchestrator.db.store import Store


def test_sets_are_created_appended_windowed_and_replaced(store):
    assert asyncio.run(store.calibration.scores("d->t/task")) == []
    assert asyncio.run(store.calibration.add_scores("d->t/task", scores=[1.0, 2.0, 3.0], model="d->t", keep=5)) == 3
    assert asyncio.run(store.calibration.add_scores("d->t/task", scores=[4.0, 5.0, 6.0], model="d->t", keep=5)) == 5
    assert asyncio.run(store.calibration.scores("d->t/task")) == [2.0, 3.0, 4.0, 5.0, 6.0]  # the newest five
    assert asyncio.run(store.calibration.add_scores("d->t/task", scores=[9.0], model="d->t", keep=5, replace=True)) == 1
    assert asyncio.run(store.calibration.scores("d->t/other")) == []
    assert [(c.name, c.model, c.size) for c in asyncio.run(store.calibration.sets())] == [("d->t/task", "d->t", 1)]


def test_concurrent_online_updates_from_two_processes_lose_nothing(store):
    # A second Store on the same database stands for a second service process (its own lock).
    other = Store(store.engine)
    stores = [store, other]

    def add(i: int) -> int:
        return asyncio.run(stores[i % 2].calibration.add_scores("d->t/task", scores=[float(i)] * 3, model="d->t", keep=10_000))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(add, range(40)))
    got = asyncio.run(store.calibration.scores("d->t/task"))
    assert sorted(got) == sorted(float(i) for i in range(40) for _ in range(3))
