"""The repository: every write the controller makes, each one a single short transaction."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from sqlalchemy import case, create_engine, delete, event, func, or_, select, update
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import Session, selectinload, sessionmaker

from orchestrator.db import migrate
from orchestrator.db.models import ApiKey, CalibrationSet, EvalResult, EvalRun, Price, QuotaUsage, RequestRecord, Server, SubCallRecord, Tenant
from orchestrator.types import UNFINISHED, RequestState, StrategyResult, SubCall, Usage


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
    # WAL lets the dashboard read while requests write. Under load (dozens of requests recording sub-calls
    # on a busy disk) writers queue for the lock for seconds: busy_timeout must outlast that, and
    # synchronous=NORMAL (safe in WAL against a process crash) keeps each commit from waiting on an fsync.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
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

    # ------------------------------------------------------------------------------------ server leases

    def register_server(self, server_id: str) -> int:
        """Server ``server_id`` starts. Whatever an earlier run under the same id (or a server from before
        leases existed) left queued or running cannot finish any more: it is failed, with the reason. Returns
        how many requests that was."""
        now = datetime.now(timezone.utc)
        with self._session.begin() as s:
            owner = or_(RequestRecord.server_id == server_id, RequestRecord.server_id.is_(None))
            n = _fail_unfinished(s, owner, f"interrupted: server {server_id} restarted before this request finished", now)
            s.execute(delete(Server).where(Server.id == server_id))
            s.add(Server(id=server_id, started_at=now, heartbeat_at=now))
            _recount_tenants(s)
            return n

    def heartbeat(self, server_id: str) -> None:
        with self._session.begin() as s:
            now = datetime.now(timezone.utc)
            if s.execute(update(Server).where(Server.id == server_id).values(heartbeat_at=now)).rowcount == 0:
                s.add(Server(id=server_id, started_at=now, heartbeat_at=now))  # reaped while it was stalled: rejoin

    def reap_servers(self, stale_after_s: float) -> int:
        """Fail the unfinished requests of every server whose heartbeat is older than ``stale_after_s``, and
        forget those servers. Any live server may run this; returns how many requests it failed."""
        now = datetime.now(timezone.utc)
        cutoff = now - timedelta(seconds=stale_after_s)
        with self._session.begin() as s:
            dead = s.execute(select(Server.id, Server.heartbeat_at).where(Server.heartbeat_at < cutoff)).all()
            n = 0
            for server_id, last in dead:
                reason = f"interrupted: server {server_id} stopped answering (last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC)"
                n += _fail_unfinished(s, RequestRecord.server_id == server_id, reason, now)
                s.execute(delete(Server).where(Server.id == server_id))
            if dead:
                _recount_tenants(s)
            return n

    def retire_server(self, server_id: str) -> int:
        """Server ``server_id`` shuts down: fail what it still holds (the reason says so), drop its lease."""
        now = datetime.now(timezone.utc)
        with self._session.begin() as s:
            n = _fail_unfinished(s, RequestRecord.server_id == server_id, f"interrupted: server {server_id} shut down before this request finished", now)
            s.execute(delete(Server).where(Server.id == server_id))
            _recount_tenants(s)
            return n

    def live_servers(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(Server.id).order_by(Server.id)))

    # ------------------------------------------------------------------------------------ tenants

    def create_tenant(self, name: str, *, tokens_per_day: int | None = None, max_concurrent: int | None = None) -> str:
        tenant_id = uuid.uuid4().hex
        with self._session.begin() as s:
            s.add(Tenant(id=tenant_id, name=name, tokens_per_day=tokens_per_day, max_concurrent=max_concurrent, running=0))
        return tenant_id

    def create_api_key(self, tenant_id: str) -> str:
        """A new key for the tenant; the plaintext is returned once and only its SHA-256 is stored."""
        key = "tts-" + secrets.token_urlsafe(24)
        with self._session.begin() as s:
            s.add(ApiKey(tenant_id=tenant_id, key_hash=_hash_key(key), prefix=key[:10]))
        return key

    def has_api_keys(self) -> bool:
        with self._session() as s:
            return s.scalar(select(ApiKey.id).limit(1)) is not None

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._session() as s:
            return s.get(Tenant, tenant_id)

    def tenant_for_key(self, key: str) -> Tenant | None:
        with self._session() as s:
            return s.scalar(
                select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id).where(ApiKey.key_hash == _hash_key(key), ApiKey.revoked_at.is_(None))
            )

    def reserve_tokens(self, tenant_id: str, want: int, *, limit: int, day: date | None = None) -> int:
        """Atomically take up to ``want`` tokens of today's quota; returns how many were granted (maybe 0).

        One UPDATE computes the grant from the row's current value, so concurrent reservations (threads,
        processes, API replicas) are serialised by the database's row lock and can never exceed ``limit``."""
        day = day or datetime.now(timezone.utc).date()
        with self._session.begin() as s:
            _insert_ignore(s, QuotaUsage, {"tenant_id": tenant_id, "day": day, "tokens": 0, "last_grant": 0})
            new_total = case((QuotaUsage.tokens + want > limit, limit), else_=QuotaUsage.tokens + want)
            stmt = (
                update(QuotaUsage)
                .where(QuotaUsage.tenant_id == tenant_id, QuotaUsage.day == day)
                .values(tokens=new_total, last_grant=new_total - QuotaUsage.tokens)  # both read the old row
                .returning(QuotaUsage.last_grant)
            )
            return max(int(s.execute(stmt).scalar_one()), 0)

    def refund_tokens(self, tenant_id: str, tokens: int, *, day: date) -> None:
        if tokens <= 0:
            return
        with self._session.begin() as s:
            s.execute(
                update(QuotaUsage).where(QuotaUsage.tenant_id == tenant_id, QuotaUsage.day == day).values(tokens=QuotaUsage.tokens - tokens)
            )

    def tokens_used(self, tenant_id: str, *, day: date | None = None) -> int:
        day = day or datetime.now(timezone.utc).date()
        with self._session() as s:
            return int(s.scalar(select(QuotaUsage.tokens).where(QuotaUsage.tenant_id == tenant_id, QuotaUsage.day == day)) or 0)

    def enter(self, tenant_id: str) -> bool:
        """Take one of the tenant's concurrent-request slots, atomically; False when all are taken."""
        with self._session.begin() as s:
            stmt = (
                update(Tenant)
                .where(Tenant.id == tenant_id, (Tenant.max_concurrent.is_(None)) | (Tenant.running < Tenant.max_concurrent))
                .values(running=Tenant.running + 1)
            )
            return s.execute(stmt).rowcount == 1

    def leave(self, tenant_id: str) -> None:
        with self._session.begin() as s:
            s.execute(update(Tenant).where(Tenant.id == tenant_id, Tenant.running > 0).values(running=Tenant.running - 1))

    # ------------------------------------------------------------------------------------ evaluations

    def add_eval_run(self, *, dataset: str, model: str, strategy: str, params: dict, results: list[dict]) -> str:
        """Store a finished evaluation run; each result has problem_id, correct, total_tokens, latency_s and
        optionally answer and cost_usd."""
        run_id = uuid.uuid4().hex
        with self._session.begin() as s:
            run = EvalRun(id=run_id, dataset=dataset, model=model, strategy=strategy, params=params, state="succeeded", finished_at=datetime.now(timezone.utc))
            run.results = [EvalResult(**r) for r in results]
            s.add(run)
        return run_id

    def open_eval_run(
        self, run_id: str, *, name: str, dataset: str, model: str, strategy: str, params: dict, budget: int | None, planned: int,
        tenant_id: str | None = None, job_id: str | None = None,
    ) -> set[str]:
        """Create run ``run_id`` if it is new (state ``running``); return the problem ids it has finished, which a
        resumed run skips."""
        with self._session.begin() as s:
            _insert_ignore(s, EvalRun, {
                "id": run_id, "name": name, "dataset": dataset, "model": model, "strategy": strategy, "params": params, "budget": budget,
                "planned": planned, "tenant_id": tenant_id, "job_id": job_id, "state": "running", "created_at": datetime.now(timezone.utc),
            })
            s.execute(update(EvalRun).where(EvalRun.id == run_id).values(state="running", planned=planned, job_id=job_id, finished_at=None))
            return set(s.scalars(select(EvalResult.problem_id).where(EvalResult.run_id == run_id)))

    def add_eval_result(self, run_id: str, result: dict) -> None:
        """Record one finished problem (once: a repeat of the same problem is ignored)."""
        with self._session.begin() as s:
            _insert_ignore(s, EvalResult, {"run_id": run_id, **result})

    def close_eval_run(self, run_id: str, state: str) -> None:
        with self._session.begin() as s:
            s.execute(update(EvalRun).where(EvalRun.id == run_id).values(state=state, finished_at=datetime.now(timezone.utc)))

    def eval_runs(self, *, name: str | None = None, job_id: str | None = None) -> list[EvalRun]:
        """Runs (with their results), oldest first, optionally of one grid or one job."""
        with self._session() as s:
            q = select(EvalRun).options(selectinload(EvalRun.results)).order_by(EvalRun.created_at, EvalRun.id)
            if name is not None:
                q = q.where(EvalRun.name == name)
            if job_id is not None:
                q = q.where(EvalRun.job_id == job_id)
            return list(s.scalars(q))

    def usage_by_tenant(self, tenant_id: str | None = None) -> list[dict]:
        """Live usage from the ledger per tenant (keyless requests under ``None``): requests by state and
        tokens. ``tenant_id`` given: that tenant only."""
        with self._session() as s:
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
            names = {t.id: t.name for t in s.scalars(select(Tenant))}
            return [
                {"tenant": names.get(r[0], "(keyless)") if r[0] else "(keyless)", "requests": int(r[1]), "running": int(r[2] or 0),
                 "tokens": int(r[3] or 0), "verifier_tokens": int(r[4] or 0), "cost_usd": float(r[5] or 0)}
                for r in s.execute(q).all()
            ]

    def eval_summaries(self, model: str) -> list[dict]:
        """Per finished run of ``model``: strategy, params, accuracy, mean tokens and cost, problem count."""
        with self._session() as s:
            rows = s.execute(
                select(
                    EvalRun.id,
                    EvalRun.strategy,
                    EvalRun.params,
                    func.avg(case((EvalResult.correct, 1.0), else_=0.0)),
                    func.avg(EvalResult.total_tokens),
                    func.avg(EvalResult.cost_usd),
                    func.count(EvalResult.id),
                )
                .join(EvalResult, EvalResult.run_id == EvalRun.id)
                .where(EvalRun.model == model, EvalRun.state == "succeeded")
                .group_by(EvalRun.id, EvalRun.strategy, EvalRun.params)
            ).all()
        return [
            {"run_id": r[0], "strategy": r[1], "params": r[2], "accuracy": float(r[3]), "mean_tokens": float(r[4]), "mean_cost_usd": float(r[5] or 0), "problems": int(r[6])}
            for r in rows
        ]

    # ------------------------------------------------------------------------------------ calibration (ATTS)

    def calibration_scores(self, name: str) -> list[float]:
        """The scores of calibration set ``name``, oldest first (empty when there is none)."""
        with self._session() as s:
            cs = s.scalar(select(CalibrationSet).where(CalibrationSet.name == name))
            return [float(x) for x in cs.data.get("scores", [])] if cs is not None else []

    def add_calibration_scores(self, name: str, scores: Sequence[float], *, model: str, keep: int, replace: bool = False) -> int:
        """Append ``scores`` to set ``name`` (created if missing; emptied first when ``replace``), keeping its
        newest ``keep``; returns the set's size. Safe against concurrent updates, from other processes too."""
        with self._session.begin() as s:
            _insert_ignore(s, CalibrationSet, {"id": uuid.uuid4().hex, "name": name, "model": model, "data": {}, "created_at": datetime.now(timezone.utc)})
        with self._session.begin() as s:
            # Write before reading: the write lock (PostgreSQL's row lock, SQLite's database lock) is held from
            # here to commit, so no other update can slip in between this read and this write.
            s.execute(update(CalibrationSet).where(CalibrationSet.name == name).values(model=model))
            cs = s.scalars(select(CalibrationSet).where(CalibrationSet.name == name)).one()
            old = [] if replace else list(cs.data.get("scores", []))
            kept = (old + [float(x) for x in scores])[-keep:]
            cs.data = {"scores": kept, "updated_at": datetime.now(timezone.utc).isoformat()}  # a new dict: JSON columns track assignment
            return len(kept)

    def calibration_sets(self) -> list[dict]:
        """Name, model pair, size and creation time of every calibration set."""
        with self._session() as s:
            return [
                {"name": c.name, "model": c.model, "size": len(c.data.get("scores", [])), "created_at": c.created_at.isoformat()}
                for c in s.scalars(select(CalibrationSet).order_by(CalibrationSet.name))
            ]

    async def acalibration_scores(self, name: str) -> list[float]:
        return await asyncio.to_thread(self.calibration_scores, name)

    async def aadd_calibration_scores(self, name: str, scores: Sequence[float], *, model: str, keep: int) -> int:
        return await asyncio.to_thread(self.add_calibration_scores, name, scores, model=model, keep=keep)

    # ------------------------------------------------------------------------------------ prices

    def set_price(self, model: str, *, prompt: float, cached: float, completion: float) -> None:
        """Dollars per million tokens for ``model``."""
        for name, value in (("prompt", prompt), ("cached", cached), ("completion", completion)):
            if value < 0:
                raise ValueError(f"price {name} must be >= 0, got {value}")
        with self._session.begin() as s:
            s.merge(Price(model=model, prompt_per_mtok=prompt, cached_per_mtok=cached, completion_per_mtok=completion))

    def prices(self) -> dict[str, tuple[float, float, float]]:
        with self._session() as s:
            return {p.model: (p.prompt_per_mtok, p.cached_per_mtok, p.completion_per_mtok) for p in s.scalars(select(Price))}

    def session(self) -> Session:
        return self._session()

    def create_request(
        self,
        *,
        request_id: str,
        model: str,
        strategy: str,
        params: dict,
        prompt: str,
        tenant_id: str | None = None,
        server_id: str | None = None,
        state: RequestState = "running",
    ) -> None:
        """Record an accepted request: ``queued`` (waiting for a run slot) or already ``running``."""
        with self._session.begin() as s:
            now = datetime.now(timezone.utc)
            s.add(
                RequestRecord(
                    id=request_id,
                    tenant_id=tenant_id,
                    server_id=server_id,
                    state=state,
                    model=model,
                    strategy=strategy,
                    params=params,
                    prompt=prompt,
                    created_at=now,
                    started_at=now if state == "running" else None,
                )
            )

    def start_request(self, request_id: str) -> None:
        """A queued request got its run slot."""
        with self._session.begin() as s:
            s.execute(
                update(RequestRecord)
                .where(RequestRecord.id == request_id, RequestRecord.state == "queued")
                .values(state="running", started_at=datetime.now(timezone.utc))
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

    def finish_unfinished(self, request_id: str, *, state: RequestState, error: str) -> bool:
        """End the request with ``state`` and ``error`` unless it has ended already; True if it had not."""
        with self._session.begin() as s:
            rec = s.scalar(
                select(RequestRecord).where(RequestRecord.id == request_id, RequestRecord.state.in_(UNFINISHED)).with_for_update()
            )
            if rec is None:
                return False
            rec.state, rec.error, rec.finished_at = state, error, datetime.now(timezone.utc)
            _total_from_subcalls(s, rec)
            return True

    def request_cancel(self, request_id: str) -> bool:
        """Flag an unfinished request for its own server to cancel; True if it was unfinished."""
        with self._session.begin() as s:
            unfinished = (RequestRecord.id == request_id) & RequestRecord.state.in_(UNFINISHED)
            now = datetime.now(timezone.utc)
            return s.execute(update(RequestRecord).where(unfinished).values(cancel_requested_at=now)).rowcount > 0

    def cancel_requested(self, request_ids: Sequence[str]) -> list[str]:
        """Those of ``request_ids`` that some server was asked to cancel."""
        if not request_ids:
            return []
        with self._session() as s:
            flagged = RequestRecord.id.in_(list(request_ids)) & RequestRecord.cancel_requested_at.is_not(None)
            return list(s.scalars(select(RequestRecord.id).where(flagged)))

    def get_request(self, request_id: str) -> RequestRecord | None:
        with self._session() as s:
            return s.scalar(
                select(RequestRecord).where(RequestRecord.id == request_id).options(selectinload(RequestRecord.subcalls))
            )

    def list_requests(self, tenant_id: str | None, *, limit: int = 20) -> list[RequestRecord]:
        """A tenant's most recent requests (``None``: the keyless ones), newest first."""
        owner = RequestRecord.tenant_id.is_(None) if tenant_id is None else RequestRecord.tenant_id == tenant_id
        with self._session() as s:
            q = select(RequestRecord).where(owner).order_by(RequestRecord.created_at.desc()).limit(limit).options(selectinload(RequestRecord.subcalls))
            return list(s.scalars(q))

    async def acreate_request(self, **kw: object) -> None:
        await asyncio.to_thread(self.create_request, **kw)  # type: ignore[arg-type]

    async def astart_request(self, request_id: str) -> None:
        await asyncio.to_thread(self.start_request, request_id)

    async def afinish_unfinished(self, request_id: str, **kw: object) -> bool:
        return await asyncio.to_thread(self.finish_unfinished, request_id, **kw)  # type: ignore[arg-type]

    async def aadd_subcall(self, request_id: str, call: SubCall) -> None:
        await asyncio.to_thread(self.add_subcall, request_id, call)

    async def afinish_request(self, request_id: str, **kw: object) -> None:
        await asyncio.to_thread(self.finish_request, request_id, **kw)  # type: ignore[arg-type]


def _fail_unfinished(s: Session, owner: object, reason: str, now: datetime) -> int:
    """Fail the matching unfinished requests; their totals become what their recorded sub-calls add up to,
    since the server that would have written them is gone."""
    rows = s.scalars(select(RequestRecord).where(owner, RequestRecord.state.in_(UNFINISHED))).all()  # type: ignore[arg-type]
    for rec in rows:
        rec.state, rec.error, rec.finished_at = "failed", reason, now
        _total_from_subcalls(s, rec)
    return len(rows)


def _total_from_subcalls(s: Session, rec: RequestRecord) -> None:
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


def _recount_tenants(s: Session) -> None:
    """Tenants' in-flight counts from the requests still unfinished (a dead server cannot decrement its own)."""
    s.flush()
    live = (
        select(func.count())
        .select_from(RequestRecord)
        .where(RequestRecord.tenant_id == Tenant.id, RequestRecord.state.in_(UNFINISHED))
        .scalar_subquery()
    )
    s.execute(update(Tenant).values(running=live))


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _insert_ignore(session: Session, model: type, values: dict) -> None:
    """INSERT that does nothing when the row conflicts with a unique key (PostgreSQL and SQLite spell it the same)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())
