"""The database's public surface: one repository per aggregate, every method async, frozen views out."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect

import pytest

from orchestrator.db import views
from orchestrator.db.base import Repository
from orchestrator.protocols import CalibrationStore

REPOSITORIES = ("requests", "tenants", "leases", "evals", "calibration", "prices")


def test_every_repository_method_is_async_with_keyword_only_options(store):
    for name in REPOSITORIES:
        repo = getattr(store, name)
        assert isinstance(repo, Repository), name
        for attr, fn in inspect.getmembers(type(repo), inspect.isfunction):
            if attr.startswith("_"):
                continue
            assert inspect.iscoroutinefunction(fn), f"{name}.{attr} is not async"
            positional = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
            assert len(positional) <= 2, f"{name}.{attr}: only the identifying argument may be positional"


def test_reads_are_frozen_views_and_calibration_is_what_strategies_get(store):
    async def go() -> None:
        tenant = await store.tenants.create("t")
        await store.requests.create("r", model="m", strategy="s", params={}, prompt="p", tenant_id=tenant)
        for row in (await store.requests.get("r"), await store.tenants.get(tenant), (await store.requests.usage_by_tenant())[0]):
            assert type(row).__module__ == views.__name__ and dataclasses.is_dataclass(row)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(row, "state", "changed")  # any attribute: a frozen view takes none

    asyncio.run(go())
    calibration: CalibrationStore = store.calibration  # the protocol ATTS reads through ctx.calibration
    assert asyncio.run(calibration.scores("none")) == []
