"""Tenants, their hashed API keys, their daily token quota and their concurrent-request slots."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import date, datetime, timezone

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from orchestrator.db.base import Repository, insert_ignore, rowcount
from orchestrator.db.models import ApiKey, QuotaUsage, Tenant
from orchestrator.db.views import TenantRow, tenant_row


class Tenants(Repository):
    """Quota and slot updates are single atomic statements, so API replicas share them safely."""

    async def create(self, name: str, *, tokens_per_day: int | None = None, max_concurrent: int | None = None) -> str:
        """A new tenant (limits ``None``: unlimited); returns its id."""
        tenant_id = uuid.uuid4().hex
        row = Tenant(id=tenant_id, name=name, tokens_per_day=tokens_per_day, max_concurrent=max_concurrent, running=0)
        await self._write(lambda s: s.add(row))
        return tenant_id

    async def create_api_key(self, tenant_id: str) -> str:
        """A new key for the tenant; the plaintext is returned once and only its SHA-256 is stored."""
        key = "tts-" + secrets.token_urlsafe(24)
        row = ApiKey(tenant_id=tenant_id, key_hash=_hash_key(key), prefix=key[:10])
        await self._write(lambda s: s.add(row))
        return key

    async def has_api_keys(self) -> bool:
        """Whether any tenant has a key (a server with keys requires them)."""
        return await self._read(lambda s: s.scalar(select(ApiKey.id).limit(1)) is not None)

    async def get(self, tenant_id: str) -> TenantRow | None:
        def work(s: Session) -> TenantRow | None:
            t = s.get(Tenant, tenant_id)
            return None if t is None else tenant_row(t)

        return await self._read(work)

    async def for_key(self, key: str) -> TenantRow | None:
        """The tenant of an unrevoked API key; ``None`` for an unknown or revoked one."""
        q = select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id).where(ApiKey.key_hash == _hash_key(key), ApiKey.revoked_at.is_(None))

        def work(s: Session) -> TenantRow | None:
            t = s.scalar(q)
            return None if t is None else tenant_row(t)

        return await self._read(work)

    async def reserve_tokens(self, tenant_id: str, *, want: int, limit: int, day: date | None = None) -> int:
        """Atomically take up to ``want`` tokens of the day's quota (default: today, UTC); returns how many
        were granted (maybe 0).

        One UPDATE computes the grant from the row's current value, so concurrent reservations (threads,
        processes, API replicas) are serialised by the database's row lock and can never exceed ``limit``."""
        day = day or datetime.now(timezone.utc).date()

        def work(s: Session) -> int:
            insert_ignore(s, QuotaUsage, {"tenant_id": tenant_id, "day": day, "tokens": 0, "last_grant": 0})
            new_total = case((QuotaUsage.tokens + want > limit, limit), else_=QuotaUsage.tokens + want)
            stmt = (
                update(QuotaUsage)
                .where(QuotaUsage.tenant_id == tenant_id, QuotaUsage.day == day)
                .values(tokens=new_total, last_grant=new_total - QuotaUsage.tokens)  # both read the old row
                .returning(QuotaUsage.last_grant)
            )
            return max(int(s.execute(stmt).scalar_one()), 0)

        return await self._write(work)

    async def refund_tokens(self, tenant_id: str, *, tokens: int, day: date) -> None:
        """Hand ``tokens`` of day ``day``'s quota back (nothing for ``tokens <= 0``)."""
        if tokens <= 0:
            return
        stmt = update(QuotaUsage).where(QuotaUsage.tenant_id == tenant_id, QuotaUsage.day == day).values(tokens=QuotaUsage.tokens - tokens)
        await self._write(lambda s: s.execute(stmt))

    async def tokens_used(self, tenant_id: str, *, day: date | None = None) -> int:
        """Tokens charged to the tenant on ``day`` (default: today, UTC)."""
        day = day or datetime.now(timezone.utc).date()
        q = select(QuotaUsage.tokens).where(QuotaUsage.tenant_id == tenant_id, QuotaUsage.day == day)
        return await self._read(lambda s: int(s.scalar(q) or 0))

    async def enter(self, tenant_id: str) -> bool:
        """Take one of the tenant's concurrent-request slots, atomically; False when all are taken."""
        stmt = (
            update(Tenant)
            .where(Tenant.id == tenant_id, (Tenant.max_concurrent.is_(None)) | (Tenant.running < Tenant.max_concurrent))
            .values(running=Tenant.running + 1)
        )
        return await self._write(lambda s: rowcount(s.execute(stmt)) == 1)

    async def leave(self, tenant_id: str) -> None:
        """Give one of the tenant's slots back."""
        stmt = update(Tenant).where(Tenant.id == tenant_id, Tenant.running > 0).values(running=Tenant.running - 1)
        await self._write(lambda s: s.execute(stmt))


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
