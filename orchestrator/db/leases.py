"""Server leases: each live API server heartbeats a row; the requests of a server that restarted, shut down
or stopped heartbeating are failed with the reason, and tenants' slot counts recomputed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from orchestrator.db.base import Repository, fail_unfinished, recount_tenants, rowcount
from orchestrator.db.models import RequestRecord, Server


class Leases(Repository):
    async def register(self, server_id: str) -> int:
        """Server ``server_id`` starts. Whatever an earlier run under the same id (or a server from before
        leases existed) left queued or running cannot finish any more: it is failed, with the reason. Returns
        how many requests that was."""

        def work(s: Session) -> int:
            now = datetime.now(timezone.utc)
            owner = or_(RequestRecord.server_id == server_id, RequestRecord.server_id.is_(None))
            n = fail_unfinished(s, owner, f"interrupted: server {server_id} restarted before this request finished", now)
            s.execute(delete(Server).where(Server.id == server_id))
            s.add(Server(id=server_id, started_at=now, heartbeat_at=now))
            recount_tenants(s)
            return n

        return await self._write(work)

    async def heartbeat(self, server_id: str) -> None:
        """Renew the lease (a server reaped while it was stalled rejoins)."""

        def work(s: Session) -> None:
            now = datetime.now(timezone.utc)
            if rowcount(s.execute(update(Server).where(Server.id == server_id).values(heartbeat_at=now))) == 0:
                s.add(Server(id=server_id, started_at=now, heartbeat_at=now))  # reaped while it was stalled: rejoin

        await self._write(work)

    async def reap(self, *, stale_after_s: float) -> int:
        """Fail the unfinished requests of every server whose heartbeat is older than ``stale_after_s``, and
        forget those servers. Any live server may run this; returns how many requests it failed."""

        def work(s: Session) -> int:
            now = datetime.now(timezone.utc)
            cutoff = now - timedelta(seconds=stale_after_s)
            dead = s.execute(select(Server.id, Server.heartbeat_at).where(Server.heartbeat_at < cutoff)).all()
            n = 0
            for server_id, last in dead:
                reason = f"interrupted: server {server_id} stopped answering (last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC)"
                n += fail_unfinished(s, RequestRecord.server_id == server_id, reason, now)
                s.execute(delete(Server).where(Server.id == server_id))
            if dead:
                recount_tenants(s)
            return n

        return await self._write(work)

    async def retire(self, server_id: str) -> int:
        """Server ``server_id`` shuts down: fail what it still holds (the reason says so), drop its lease;
        returns how many requests that was."""

        def work(s: Session) -> int:
            now = datetime.now(timezone.utc)
            owner = RequestRecord.server_id == server_id
            n = fail_unfinished(s, owner, f"interrupted: server {server_id} shut down before this request finished", now)
            s.execute(delete(Server).where(Server.id == server_id))
            recount_tenants(s)
            return n

        return await self._write(work)

    async def live(self) -> list[str]:
        """The ids of the servers holding a lease, sorted."""
        return await self._read(lambda s: list(s.scalars(select(Server.id).order_by(Server.id))))
