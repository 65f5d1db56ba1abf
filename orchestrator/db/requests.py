"""The request ledger: a request's row from acceptance to its final state, its sub-calls, cancel flags, and
the usage the ledger adds up to per tenant."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from orchestrator.db.base import GroupCommit, Repository, rowcount, total_from_subcalls
from orchestrator.db.models import RequestRecord, SubCallRecord, Tenant
from orchestrator.db.views import RequestRow, UsageRow, request_row
from orchestrator.types import UNFINISHED, RequestState, StrategyResult, SubCall, Usage


class Requests(Repository):
    """Every write the controller makes about a request, each one a single short transaction; sub-call rows
    by group commit (:class:`~orchestrator.db.base.GroupCommit`: many calls' rows in one transaction, each
    call acknowledged once its row is committed)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(sessions)
        self._subcalls = GroupCommit(sessions, SubCallRecord.__table__)

    async def create(
        self,
        request_id: str,
        *,
        model: str,
        strategy: str,
        params: dict[str, Any],
        prompt: str,
        tenant_id: str | None = None,
        server_id: str | None = None,
        state: RequestState = "running",
    ) -> None:
        """Record an accepted request: ``queued`` (waiting for a run slot) or already ``running``."""

        def work(s: Session) -> None:
            now = datetime.now(timezone.utc)
            s.add(
                RequestRecord(
                    id=request_id, tenant_id=tenant_id, server_id=server_id, state=state, model=model, strategy=strategy, params=params,
                    prompt=prompt, created_at=now, started_at=now if state == "running" else None,
                )
            )

        await self._write(work)

    async def start(self, request_id: str) -> None:
        """A queued request got its run slot."""
        stmt = (
            update(RequestRecord)
            .where(RequestRecord.id == request_id, RequestRecord.state == "queued")
            .values(state="running", started_at=datetime.now(timezone.utc))
        )
        await self._write(lambda s: s.execute(stmt))

    async def add_subcall(self, request_id: str, *, call: SubCall) -> None:
        """Append one engine call to the request's ledger; a scoring call's tokens count as verifier tokens.
        Returns once the row is committed (with the rows of other calls that ended meanwhile)."""
        await self._subcalls.add(subcall_row(request_id, call))

    async def finish(
        self,
        request_id: str,
        *,
        state: RequestState,
        usage: Usage,
        result: StrategyResult | None = None,
        error: str | None = None,
        verifier_tokens: int = 0,
        cost_usd: float = 0.0,
        budget: dict[str, Any] | None = None,
    ) -> None:
        """End the request with its totals (and answer, when there is one). Raises ``KeyError`` for an unknown id.
        Sub-call rows still committing (a call cancelled while its row was queued) are committed first."""

        def work(s: Session) -> None:
            rec = s.get(RequestRecord, request_id)
            if rec is None:
                raise KeyError(request_id)
            rec.state = state
            rec.prompt_tokens = usage.prompt_tokens
            rec.cached_tokens = usage.cached_tokens
            rec.completion_tokens = usage.completion_tokens
            rec.finished_at = datetime.now(timezone.utc)
            rec.error = error
            rec.verifier_tokens, rec.cost_usd, rec.budget = verifier_tokens, cost_usd, budget
            if result is not None:
                rec.answer, rec.text, rec.finish_reason = result.shown_answer, result.text, result.finish_reason  # as written, not the vote key

        await self._subcalls.drain()
        await self._write(work)

    async def finish_unfinished(self, request_id: str, *, state: RequestState, error: str) -> bool:
        """End the request with ``state`` and ``error`` unless it has ended already; True if it had not. Its
        totals become what its recorded sub-calls add up to."""

        def work(s: Session) -> bool:
            rec = s.scalar(
                select(RequestRecord).where(RequestRecord.id == request_id, RequestRecord.state.in_(UNFINISHED)).with_for_update()
            )
            if rec is None:
                return False
            rec.state, rec.error, rec.finished_at = state, error, datetime.now(timezone.utc)
            total_from_subcalls(s, rec)
            return True

        await self._subcalls.drain()  # the totals are read off the rows: every queued one must be in
        return await self._write(work)

    async def request_cancel(self, request_id: str) -> bool:
        """Flag an unfinished request for its own server to cancel; True if it was unfinished."""
        unfinished = (RequestRecord.id == request_id) & RequestRecord.state.in_(UNFINISHED)
        stmt = update(RequestRecord).where(unfinished).values(cancel_requested_at=datetime.now(timezone.utc))
        return await self._write(lambda s: rowcount(s.execute(stmt)) > 0)

    async def cancel_requested(self, request_ids: Sequence[str]) -> list[str]:
        """Those of ``request_ids`` that some server was asked to cancel."""
        if not request_ids:
            return []
        flagged = RequestRecord.id.in_(list(request_ids)) & RequestRecord.cancel_requested_at.is_not(None)
        return await self._read(lambda s: list(s.scalars(select(RequestRecord.id).where(flagged))))

    async def get(self, request_id: str) -> RequestRow | None:
        """The request with its sub-calls; ``None`` when there is no such request."""
        q = select(RequestRecord).where(RequestRecord.id == request_id).options(selectinload(RequestRecord.subcalls))

        def work(s: Session) -> RequestRow | None:
            rec = s.scalar(q)
            return None if rec is None else request_row(rec)

        return await self._read(work)

    async def recent(self, tenant_id: str | None, *, limit: int = 20) -> list[RequestRow]:
        """A tenant's most recent requests (``None``: the keyless ones), newest first, at most ``limit``."""
        owner = RequestRecord.tenant_id.is_(None) if tenant_id is None else RequestRecord.tenant_id == tenant_id
        q = select(RequestRecord).where(owner).order_by(RequestRecord.created_at.desc()).limit(limit).options(selectinload(RequestRecord.subcalls))
        return await self._read(lambda s: [request_row(r) for r in s.scalars(q)])

    async def usage_by_tenant(self, tenant_id: str | None = None) -> list[UsageRow]:
        """Live usage from the ledger per tenant (keyless requests under ``(keyless)``): requests, those running,
        generated tokens, scoring tokens and dollars. ``tenant_id`` given: that tenant only."""
        q = (
            select(
                RequestRecord.tenant_id,
                func.count(RequestRecord.id),
                func.sum(case((RequestRecord.state == "running", 1), else_=0)),
                func.sum(RequestRecord.prompt_tokens + RequestRecord.completion_tokens),
                func.sum(RequestRecord.verifier_tokens),
                func.sum(RequestRecord.cost_usd),
            )
            .group_by(RequestRecord.tenant_id)
        )
        if tenant_id is not None:
            q = q.where(RequestRecord.tenant_id == tenant_id)

        def work(s: Session) -> list[UsageRow]:
            names = {t.id: t.name for t in s.scalars(select(Tenant))}
            return [
                UsageRow(
                    tenant=names.get(r[0], "(keyless)") if r[0] else "(keyless)", tenant_id=r[0], requests=int(r[1]), running=int(r[2] or 0),
                    tokens=int(r[3] or 0), verifier_tokens=int(r[4] or 0), cost_usd=float(r[5] or 0),
                )
                for r in s.execute(q).all()
            ]

        return await self._read(work)


def subcall_row(request_id: str, call: SubCall) -> dict[str, Any]:
    """The ledger row of one engine call (``subcalls``' columns), stamped now: when the call ended."""
    return {
        "request_id": request_id, "seq": call.seq, "stage": call.stage, "role": call.role, "branch": call.branch, "worker": call.worker, "n": call.n,
        "prompt_tokens": call.usage.prompt_tokens, "cached_tokens": call.usage.cached_tokens, "completion_tokens": call.usage.completion_tokens,
        "verifier_tokens": call.usage.total_tokens if call.kind == "score" else 0,
        "cost_usd": call.cost_usd, "latency_s": call.latency_s, "finish_reasons": list(call.finish_reasons), "created_at": datetime.now(timezone.utc),
    }
