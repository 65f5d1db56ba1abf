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


@dataclass
class Grant:
    """The meter a request runs under, and what it drew from its tenant's daily quota (``granted`` tokens;
    ``short`` once the remainder could not give all it asked for)."""

    meter: BudgetMeter
    wanted: int = 0
    granted: int = 0
    short: bool = False
    tokens_per_day: int | None = None

    @property
    def quota(self) -> QuotaShare | None:
        """Set when the tenant's remainder cut this request's budget."""
        return QuotaShare(wanted=self.wanted, granted=self.granted, tokens_per_day=self.tokens_per_day) if self.short else None


def seconds_to_midnight(day: date) -> int:
    """Whole seconds (at least 1) until the UTC day after ``day`` begins: when a daily quota resets."""
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    return max(1, math.ceil((midnight - datetime.now(timezone.utc)).total_seconds()))


class Quotas:
    """Tenants' concurrency limits and daily token quotas, kept in the database (shared by API replicas)."""

    def __init__(self, store: Store, metrics: ServiceMetrics, *, live: bool = True) -> None:
        self.store, self.metrics = store, metrics
        self.live = live  # the meters it hands out meter live (orchestrator.budget)

    def want(self, ceiling: int, *, prompt_tokens: int, worst_case: int | None, seen: float | None) -> int:
        """The tokens a request first reserves from its tenant's quota: what it can at most spend (its strategy's
        ``worst_case`` for its parameters plus its prompt, within its own limit ``ceiling``), not the server's
        ceiling, so that one request does not lock up a tenant's whole quota while it runs. Metered live, a
        request takes what its strategy has spent per request on this server (``seen``, with room to spare)
        and grows the grant when a call needs more (:meth:`hold`)."""
        want = ceiling if worst_case is None else min(ceiling, worst_case + prompt_tokens)
        if self.live and seen is not None:
            want = max(min(want, math.ceil(1.5 * seen)), prompt_tokens + 1)
        return want

    @asynccontextmanager
    async def hold(
        self, tenant: TenantRef | None, budget: Budget, *, want: int, least: int, ceiling: int, prices: Mapping[str, Price]
    ) -> AsyncIterator[Grant]:
        """The meter a request runs under, and what its tenant's quota granted it.

        A tenant's request first takes one of its concurrency slots, then reserves ``want`` tokens (what its
        strategy expects to spend at most) from today's quota, atomically; its token budget is what was
        granted, grown while it runs when a call needs more, up to ``ceiling`` (the request's own limit). A
        first grant below ``least`` (the request's prompt and one token: less cannot produce anything) is
        handed back at once. On leaving, what the meter did not spend is refunded: the tenant pays what the ledger
        holds, every token its calls reported, scoring included. Raises :class:`QuotaExceeded` (429, with
        the seconds to the quota's reset) when no slot is free or today's remainder is below ``least``."""
        if tenant is None:
            yield Grant(BudgetMeter(budget, prices=prices, live=self.live))
            return
        if not await self.store.tenants.enter(tenant.id):
            self.metrics.rejected.labels("429").inc()
            raise QuotaExceeded(f"tenant {tenant.name!r} already has {tenant.max_concurrent} requests running", retry_after=1)
        day = datetime.now(timezone.utc).date()
        grant = Grant(BudgetMeter(budget, prices=prices, live=self.live), wanted=want, tokens_per_day=tenant.tokens_per_day)
        limit = tenant.tokens_per_day

        async def draw(tokens: int, least: int | None = None) -> int:
            # Shielded, and counted even when cancelled: a reservation the database committed must be refunded.
            reserving = asyncio.ensure_future(self.store.tenants.reserve_tokens(tenant.id, want=tokens, limit=limit or 0, day=day))
            try:
                got = await asyncio.shield(reserving)
            except asyncio.CancelledError:
                grant.granted += await reserving
                raise
            grant.granted += got
            # Short when the quota could not give what was needed (``least``; a grant grows in larger steps).
            grant.short |= got < (tokens if least is None else least)
            return got

        try:
            if limit is not None:
                first = await draw(want)
                if first < min(least, want):
                    grant.granted = 0
                    if first:
                        await asyncio.shield(self.store.tenants.refund_tokens(tenant.id, tokens=first, day=day))
                    self.metrics.rejected.labels("429").inc()
                    used = "has used its" if not first else f"has {first} of its"
                    raise QuotaExceeded(
                        f"tenant {tenant.name!r} {used} {limit} tokens for today"
                        + (f" left, fewer than this request's prompt and one token ({least})" if first else ""),
                        retry_after=seconds_to_midnight(day),
                    )
                # The grant grows while the request runs (BudgetMeter.make_room), up to its own token limit.
                grant.meter = BudgetMeter(replace(budget, total_tokens=first), prices=prices, draw=draw, ceiling=ceiling, live=self.live)
            yield grant
        finally:
            if grant.granted:
                await asyncio.shield(self.store.tenants.refund_tokens(tenant.id, tokens=grant.granted - grant.meter.spent_tokens, day=day))
            await asyncio.shield(self.store.tenants.leave(tenant.id))
