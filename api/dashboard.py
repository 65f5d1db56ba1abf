"""The cost-versus-accuracy dashboard: evaluation results (per run: accuracy with its 95% interval, mean cost by
several measures, accuracy per difficulty level) and live usage per tenant from the ledger. The page draws
with plotly's JavaScript served from the installed plotly package, so it works with no network."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable

import plotly
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from orchestrator.controller import Controller, TenantRef
from orchestrator.evals import summarize

PAGE = Path(__file__).with_name("dashboard.html")


@lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


def eval_points(controller: Controller, tenant_id: str | None) -> list[dict[str, Any]]:
    """One point per evaluation run the caller may see (its tenant's and the keyless ones)."""
    out = []
    for run in controller.store.eval_runs():
        if run.tenant_id is not None and run.tenant_id != tenant_id:
            continue
        rows = [{c.name: getattr(r, c.name) for c in r.__table__.columns} for r in run.results]
        if not rows:
            continue
        params = ",".join(f"{k}={v}" for k, v in sorted(run.params.items()))
        summary = asdict(summarize(f"{run.strategy}({params})" + (f"@{run.budget}" if run.budget else ""), run.id, rows))
        summary.update(strategy=run.strategy, params=run.params, budget=run.budget, grid=run.name, dataset=run.dataset, model=run.model,
                       state=run.state, planned=run.planned, job_id=run.job_id)
        out.append(summary)
    return out


def add_dashboard(app: FastAPI, controller: Controller, caller: Callable[[Request], Awaitable[TenantRef | None]]) -> None:
    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/dashboard/plotly.js", include_in_schema=False)
    async def plotly_js() -> Response:
        return Response(_plotly_js(), media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/v1/evals")
    async def evals(request: Request) -> dict[str, Any]:
        """Every evaluation run the caller may see, summarised: accuracy (Wilson 95% interval), mean total and
        sequential tokens, dollars and latency, accuracy per level."""
        tenant = await caller(request)
        return {"object": "list", "data": await asyncio.to_thread(eval_points, controller, tenant.id if tenant else None)}

    @app.get("/v1/usage")
    async def usage(request: Request) -> dict[str, Any]:
        """Live usage per tenant from the ledger (a key sees its own tenant only)."""
        tenant = await caller(request)
        return {"object": "list", "data": await asyncio.to_thread(controller.store.usage_by_tenant, tenant.id if tenant else None)}
