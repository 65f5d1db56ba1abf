"""What every repository shares: the session factory, the one way to run blocking SQL off the event loop, and
the SQL helpers more than one aggregate needs (a dead server's requests are failed by the lease repository
with the same rule the request repository uses to end one)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Callable, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, Result, Table, case, func, insert, select, update
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


class GroupCommit:
    """Rows of one table written by group commit: :meth:`add` queues a row and returns once a transaction
    holding it has committed; while one batch commits, the rows that arrive meanwhile queue for the next,
    which is then one multi-row INSERT in one transaction. Under load that is one commit (one session, one
    connection checkout, one trip to a worker thread) for many rows instead of one each; alone, a row
    waits for its own commit exactly as a single write would.

    Nothing is acknowledged before it is durable (as durable as a commit of the database is), so no caller
    ever acts on a row that a crash can still lose. The rows of a failed batch fail every caller waiting
    on them with the database's error. A caller cancelled while waiting does not withdraw its row: it is
    committed with its batch (call :meth:`drain` to wait for that, as ending a request does).

    Bound to the event loop that uses it; a later event loop (sync callers through ``asyncio.run``) gets
    fresh state, since a loop that ended has no batch in flight that anyone still waits on."""

    def __init__(self, sessions: sessionmaker[Session], table: Table) -> None:
        self._sessions = sessions
        self._insert = insert(table)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[dict[str, Any]] = []
        # The next batch's outcome, and the one being committed: the writer's own futures, which no
        # cancelled caller can cancel (callers wait on them shielded).
        self._next: asyncio.Future[None] | None = None
        self._committing: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def add(self, row: dict[str, Any]) -> None:
        """Queue ``row`` for the next batch and wait until it has been committed; raises what the batch raised."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queued, self._next, self._committing, self._flusher = loop, [], None, None, None
        if self._next is None:
            self._next = loop.create_future()
            # A batch whose callers were all cancelled still fails quietly, not as "exception never retrieved".
            self._next.add_done_callback(lambda f: f.cancelled() or f.exception())
        batch = self._next
        self._queued.append(row)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="tts-ledger-commit")
        await asyncio.shield(batch)

    async def drain(self) -> None:
        """Return once every row queued so far on this loop has been committed, or its batch has failed
        (the callers that queued it hear why). Later rows are not waited for: under steady load the
        writer never idles, and ending one request must not wait for everyone's."""
        if self._loop is not asyncio.get_running_loop():
            return
        last = self._next or self._committing  # batches commit in order: the last one done, all are
        if last is not None and not last.done():
            await asyncio.wait({last})

    async def _flush(self) -> None:
        while self._queued:
            rows, batch = self._queued, self._next
            assert batch is not None
            self._queued, self._next, self._committing = [], None, batch
            try:
                await asyncio.to_thread(self._commit, rows)
            except asyncio.CancelledError:
                batch.cancel()  # the loop is shutting down; the thread may still commit the rows
                raise
            except Exception as err:  # noqa: BLE001 - handed to every caller of the batch, who raise it
                batch.set_exception(err)
            else:
                batch.set_result(None)

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        with self._sessions.begin() as s:
            s.connection().execute(self._insert, rows)


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
