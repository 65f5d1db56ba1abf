"""The repository: every write the controller makes, each one a single short transaction."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import Session, selectinload, sessionmaker

from orchestrator.db import migrate
from orchestrator.db.models import RequestRecord, SubCallRecord
from orchestrator.types import RequestState, StrategyResult, SubCall, Usage


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
    # WAL lets the dashboard read while requests write; busy_timeout rides out short write locks.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """SQL storage of requests and their sub-calls. Methods are blocking; ``a*`` twins run them off the
    event loop."""

    def __init__(self, engine: SAEngine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Store:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        migrate.upgrade(engine)  # the migrations own the schema; an up-to-date database is left as it is
        return cls(engine)

    def recover_interrupted(self) -> int:
        """Mark requests a crash left queued or running as failed, with the reason; returns how many."""
        with self._session.begin() as s:
            rows = s.scalars(select(RequestRecord).where(RequestRecord.state.in_(("queued", "running")))).all()
            for rec in rows:
                rec.state = "failed"
                rec.error = "interrupted: the service stopped while this request was running"
                rec.finished_at = datetime.now(timezone.utc)
            return len(rows)

    def session(self) -> Session:
        return self._session()

    def create_request(self, *, request_id: str, model: str, strategy: str, params: dict, prompt: str) -> None:
        with self._session.begin() as s:
            now = datetime.now(timezone.utc)
            s.add(
                RequestRecord(
                    id=request_id, state="running", model=model, strategy=strategy, params=params, prompt=prompt, created_at=now, started_at=now
                )
            )

    def add_subcall(self, request_id: str, call: SubCall) -> None:
        with self._session.begin() as s:
            s.add(
                SubCallRecord(
                    request_id=request_id,
                    seq=call.seq,
                    stage=call.stage,
                    role=call.role,
                    branch=call.branch,
                    worker=call.worker,
                    n=call.n,
                    prompt_tokens=call.usage.prompt_tokens,
                    cached_tokens=call.usage.cached_tokens,
                    completion_tokens=call.usage.completion_tokens,
                    verifier_tokens=call.usage.total_tokens if call.kind == "score" else 0,
                    cost_usd=call.cost_usd,
                    latency_s=call.latency_s,
                    finish_reasons=list(call.finish_reasons),
                )
            )

    def finish_request(
        self,
        request_id: str,
        *,
        state: RequestState,
        usage: Usage,
        result: StrategyResult | None = None,
        error: str | None = None,
        verifier_tokens: int = 0,
        cost_usd: float = 0.0,
        budget: dict | None = None,
    ) -> None:
        with self._session.begin() as s:
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
                rec.answer, rec.text, rec.finish_reason = result.answer, result.text, result.finish_reason

    def get_request(self, request_id: str) -> RequestRecord | None:
        with self._session() as s:
            return s.scalar(
                select(RequestRecord).where(RequestRecord.id == request_id).options(selectinload(RequestRecord.subcalls))
            )

    async def acreate_request(self, **kw: object) -> None:
        await asyncio.to_thread(self.create_request, **kw)  # type: ignore[arg-type]

    async def aadd_subcall(self, request_id: str, call: SubCall) -> None:
        await asyncio.to_thread(self.add_subcall, request_id, call)

    async def afinish_request(self, request_id: str, **kw: object) -> None:
        await asyncio.to_thread(self.finish_request, request_id, **kw)  # type: ignore[arg-type]
