"""Tenants' limits on a request: a concurrency slot and a share of the daily token quota, held while it runs."""

from __future__ import annotations

import asyncio
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import AsyncIterator, Mapping

from orchestrator.budget import Budget, BudgetMeter, Price
from orchestrator.db.store import Store
from orchestrator.db.views import TenantRow
from orchestrator.errors import QuotaExceeded
from orchestrator.metrics import ServiceMetrics


@dataclass(frozen=True)
class TenantRef:
    """The tenant a request is charged to (from its API key)."""

    id: str
    name: str
    tokens_per_day: int | None = None
    max_concurrent: int | None = None

    @classmethod
    def of(cls, tenant: TenantRow) -> TenantRef:
        return cls(tenant.id, tenant.name, tenant.tokens_per_day, tenant.max_concurrent)


@dataclass(frozen=True)
class QuotaShare:
    """A tenant's request granted less of the daily quota than it could spend: the quota shaped its budget."""

    wanted: int
    granted: int
    tokens_per_day: int | None


@dataclass(frozen=True)
class Grant:
    """The meter a request runs under; ``quota`` is set when the tenant's remainder cut its budget."""

    meter: BudgetMeter
    quota: QuotaShare | None = None


def seconds_to_midnight(day: date) -> int:
    """Whole seconds (at least 1) until the UTC day after ``day`` begins: when a daily quota resets."""
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    return max(1, math.ceil((midnight - datetime.now(timezone.utc)).total_seconds()))


class Quotas:
    """Tenants' concurrency limits and daily token quotas, kept in the database (shared by API replicas)."""

    def __init__(self, store: Store, metrics: ServiceMetrics) -> None:
        self.store, self.metrics = store, metrics

    @asynccontextmanager
    async def hold(
        self, tenant: TenantRef | None, budget: Budget, *, want: int, least: int, prices: Mapping[str, Price]
    ) -> AsyncIterator[Grant]:
        """The meter a request runs under, and what its tenant's quota granted it.

        A tenant's request first takes one of its concurrency slots, then reserves ``want`` tokens (what it
        can at most spend) from today's quota, atomically; its token budget shrinks to what was granted. A
        grant below ``least`` (the request's prompt and one token: less cannot produce anything) is handed
        back at once. On leaving, what the meter did not spend is refunded: the tenant pays what the ledger
        holds, every token its calls reported, scoring included. Raises :class:`QuotaExceeded` (429, with
        the seconds to the quota's reset) when no slot is free or today's remainder is below ``least``."""
        if tenant is None:
            yield Grant(BudgetMeter(budget, prices=prices))
            return
        if not await self.store.tenants.enter(tenant.id):
            self.metrics.rejected.labels("429").inc()
            raise QuotaExceeded(f"tenant {tenant.name!r} already has {tenant.max_concurrent} requests running", retry_after=1)
        day = datetime.now(timezone.utc).date()
        granted = 0
        meter: BudgetMeter | None = None
        try:
            if tenant.tokens_per_day is not None:
                granted = await self.store.tenants.reserve_tokens(tenant.id, want=want, limit=tenant.tokens_per_day, day=day)
                if granted < min(least, want):
                    left, granted = granted, 0
                    if left:
                        await asyncio.shield(self.store.tenants.refund_tokens(tenant.id, tokens=left, day=day))
                    self.metrics.rejected.labels("429").inc()
                    used = "has used its" if not left else f"has {left} of its"
                    raise QuotaExceeded(
                        f"tenant {tenant.name!r} {used} {tenant.tokens_per_day} tokens for today"
                        + (f" left, fewer than this request's prompt and one token ({least})" if left else ""),
                        retry_after=seconds_to_midnight(day),
                    )
                budget = replace(budget, total_tokens=granted)
            meter = BudgetMeter(budget, prices=prices)
            shaped = tenant.tokens_per_day is not None and granted < want
            yield Grant(meter, QuotaShare(wanted=want, granted=granted, tokens_per_day=tenant.tokens_per_day) if shaped else None)
        finally:
            spent = meter.spent_tokens if meter is not None else 0
            if granted:
                await asyncio.shield(self.store.tenants.refund_tokens(tenant.id, tokens=granted - spent, day=day))
            await asyncio.shield(self.store.tenants.leave(tenant.id))
