"""The cost-versus-accuracy dashboard and its data: evaluation results (per run: accuracy with its 95%
interval, mean cost by several measures, accuracy per difficulty level) and live usage per tenant from the
ledger. The page draws with plotly's JavaScript served from the installed plotly package, so it works with no
network."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import plotly
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from api.deps import StoreDep, TenantDep
from api.schemas import EvalList, EvalPoint, UsageList
from api.views import eval_point, tenant_usage
from orchestrator.db.store import Store

PAGE = Path(__file__).resolve().parent.parent / "dashboard.html"

router = APIRouter()


@lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


async def eval_points(store: Store, tenant_id: str | None) -> list[EvalPoint]:
    """One point per evaluation run the caller may see (its tenant's and the keyless ones) that has results."""
    points = (eval_point(run) for run in await store.evals.runs() if run.tenant_id is None or run.tenant_id == tenant_id)
    return [p for p in points if p is not None]


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


@router.get("/dashboard/plotly.js", include_in_schema=False)
async def plotly_js() -> Response:
    return Response(_plotly_js(), media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})


@router.get("/v1/evals")
async def evals(store: StoreDep, tenant: TenantDep) -> EvalList:
    """Every evaluation run the caller may see, summarised: accuracy (Wilson 95% interval), mean total and
    sequential tokens, dollars and latency, accuracy per level."""
    return EvalList(data=await eval_points(store, tenant.id if tenant else None))


@router.get("/v1/usage")
async def usage(store: StoreDep, tenant: TenantDep) -> UsageList:
    """Live usage per tenant from the ledger (a key sees its own tenant only)."""
    return UsageList(data=tenant_usage(await store.requests.usage_by_tenant(tenant.id if tenant else None)))
