"""What every repository shares: the session factory, the one way to run blocking SQL off the event loop, and
the SQL helpers more than one aggregate needs (a dead server's requests are failed by the lease repository
with the same rule the request repository uses to end one)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Callable, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, Result, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import RequestRecord, SubCallRecord, Tenant
from orchestrator.types import UNFINISHED

T = TypeVar("T")


class Repository:
    """One aggregate's tables. Every public method of a subclass is ``async`` and runs its SQL in a worker
    thread (the drivers block), each read or write one short transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    async def _read(self, work: Callable[[Session], T]) -> T:
        """``work`` in a session of its own, off the event loop (no transaction is committed)."""

        def go() -> T:
            with self._sessions() as s:
                return work(s)

        return await asyncio.to_thread(go)

    async def _write(self, work: Callable[[Session], T]) -> T:
        """``work`` in one transaction, committed when it returns, off the event loop."""

        def go() -> T:
            with self._sessions.begin() as s:
                return work(s)

        return await asyncio.to_thread(go)


def insert_ignore(session: Session, model: type, values: dict[str, Any]) -> None:
    """INSERT that does nothing when the row conflicts with a unique key (PostgreSQL and SQLite spell it the same)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(model).values(**values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(model).values(**values).on_conflict_do_nothing())


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (``Session.execute`` is typed as returning any result; DML's is a cursor's)."""
    return cast("CursorResult[Any]", result).rowcount


def fail_unfinished(s: Session, owner: ColumnElement[bool], reason: str, now: datetime) -> int:
    """Fail the matching unfinished requests; their totals become what their recorded sub-calls add up to,
    since the server that would have written them is gone."""
    rows = s.scalars(select(RequestRecord).where(owner, RequestRecord.state.in_(UNFINISHED))).all()
    for rec in rows:
        rec.state, rec.error, rec.finished_at = "failed", reason, now
        total_from_subcalls(s, rec)
    return len(rows)


def total_from_subcalls(s: Session, rec: RequestRecord) -> None:
    """Set the request's token and cost totals to what its recorded sub-calls add up to."""
    generated = SubCallRecord.verifier_tokens == 0
    p, c, k, v, cost = s.execute(
        select(
            func.coalesce(func.sum(case((generated, SubCallRecord.prompt_tokens), else_=0)), 0),
            func.coalesce(func.sum(case((generated, SubCallRecord.completion_tokens), else_=0)), 0),
            func.coalesce(func.sum(case((generated, SubCallRecord.cached_tokens), else_=0)), 0),
            func.coalesce(func.sum(SubCallRecord.verifier_tokens), 0),
            func.coalesce(func.sum(SubCallRecord.cost_usd), 0.0),
        ).where(SubCallRecord.request_id == rec.id)
    ).one()
    rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens, rec.verifier_tokens, rec.cost_usd = int(p), int(c), int(k), int(v), float(cost)


def recount_tenants(s: Session) -> None:
    """Tenants' in-flight counts from the requests still unfinished (a dead server cannot decrement its own)."""
    s.flush()
    live = (
        select(func.count())
        .select_from(RequestRecord)
        .where(RequestRecord.tenant_id == Tenant.id, RequestRecord.state.in_(UNFINISHED))
        .scalar_subquery()
    )
    s.execute(update(Tenant).values(running=live))
