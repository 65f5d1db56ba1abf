"""Evaluation runs and their per-problem results: the dashboard's data and `auto`'s measurements."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, selectinload

from orchestrator.db.base import Repository, insert_ignore
from orchestrator.db.models import EvalResult, EvalRun
from orchestrator.db.views import EvalRunRow, EvalSummaryRow, eval_run_row


class Evals(Repository):
    async def add_run(self, *, dataset: str, model: str, strategy: str, params: dict[str, Any], results: Sequence[dict[str, Any]]) -> str:
        """Store a finished evaluation run; each result has problem_id, correct, total_tokens, latency_s and
        optionally answer and cost_usd. Returns the run's id."""
        run_id = uuid.uuid4().hex
        run = EvalRun(id=run_id, dataset=dataset, model=model, strategy=strategy, params=params, state="succeeded", finished_at=datetime.now(timezone.utc))
        run.results = [EvalResult(**r) for r in results]
        await self._write(lambda s: s.add(run))
        return run_id

    async def open_run(
        self, run_id: str, *, name: str, dataset: str, model: str, strategy: str, params: dict[str, Any], budget: int | None, planned: int,
        tenant_id: str | None = None, job_id: str | None = None,
    ) -> set[str]:
        """Create run ``run_id`` if it is new (state ``running``); return the problem ids it has finished, which a
        resumed run skips."""

        def work(s: Session) -> set[str]:
            insert_ignore(s, EvalRun, {
                "id": run_id, "name": name, "dataset": dataset, "model": model, "strategy": strategy, "params": params, "budget": budget,
                "planned": planned, "tenant_id": tenant_id, "job_id": job_id, "state": "running", "created_at": datetime.now(timezone.utc),
            })
            s.execute(update(EvalRun).where(EvalRun.id == run_id).values(state="running", planned=planned, job_id=job_id, finished_at=None))
            return set(s.scalars(select(EvalResult.problem_id).where(EvalResult.run_id == run_id)))

        return await self._write(work)

    async def add_result(self, run_id: str, *, result: dict[str, Any]) -> None:
        """Record one finished problem (once: a repeat of the same problem is ignored)."""
        await self._write(lambda s: insert_ignore(s, EvalResult, {"run_id": run_id, **result}))

    async def close_run(self, run_id: str, *, state: str) -> None:
        """End the run with ``state`` (``succeeded`` or ``failed``)."""
        stmt = update(EvalRun).where(EvalRun.id == run_id).values(state=state, finished_at=datetime.now(timezone.utc))
        await self._write(lambda s: s.execute(stmt))

    async def runs(self, *, name: str | None = None, job_id: str | None = None) -> list[EvalRunRow]:
        """Runs (with their results), oldest first, optionally of one grid or one job."""
        q = select(EvalRun).options(selectinload(EvalRun.results)).order_by(EvalRun.created_at, EvalRun.id)
        if name is not None:
            q = q.where(EvalRun.name == name)
        if job_id is not None:
            q = q.where(EvalRun.job_id == job_id)
        return await self._read(lambda s: [eval_run_row(r) for r in s.scalars(q)])

    async def summaries(self, model: str) -> list[EvalSummaryRow]:
        """Per finished run of ``model``: strategy, params, accuracy, mean tokens and cost, problem count."""
        q = (
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
        )
        rows = await self._read(lambda s: s.execute(q).all())
        return [
            EvalSummaryRow(
                run_id=r[0], strategy=r[1], params=r[2], accuracy=float(r[3]), mean_tokens=float(r[4]), mean_cost_usd=float(r[5] or 0), problems=int(r[6])
            )
            for r in rows
        ]
