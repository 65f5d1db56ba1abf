"""The caller's recorded requests: list, look up, cancel. A key sees its tenant's requests; no key, the keyless
ones; another tenant's request is a 404 like a missing one."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, ControllerDep, StoreDep, TenantDep
from api.errors import ERRORS
from api.schemas import RequestList, RequestView
from api.views import request_view
from orchestrator.errors import InvalidRequest

router = APIRouter()


@router.get("/v1/requests", response_model=RequestList, responses=ERRORS)
async def list_requests(store: StoreDep, caller: CallerDep, limit: int = 20) -> RequestList:
    """The caller's most recent requests, newest first (a key sees its tenant's; no key, the keyless ones)."""
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be between 1 and 1000", param="limit")
    tenant = await caller.tenant()
    recs = await store.requests.recent(tenant.id if tenant else None, limit=limit)
    return RequestList(data=[request_view(r) for r in recs])


@router.get("/v1/requests/{request_id}", response_model=RequestView, responses=ERRORS)
async def get_request(request_id: str, controller: ControllerDep, tenant: TenantDep) -> RequestView:
    """The request with its sub-calls in order (role, stage, samples, tokens, finish reasons)."""
    rec = await controller.lookup(request_id, tenant.id if tenant else None)
    return request_view(rec, calls=True)


@router.delete("/v1/requests/{request_id}", response_model=RequestView, responses=ERRORS)
async def cancel_request(request_id: str, controller: ControllerDep, tenant: TenantDep) -> RequestView:
    """Cancel a queued or running request, on whichever replica runs it (409 if it has ended)."""
    return request_view(await controller.cancel(request_id, tenant.id if tenant else None))
