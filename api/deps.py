"""FastAPI dependencies: what a route may use, read from ``app.state`` (which ``create_app`` fills).

Routes take these as parameters (``controller: ControllerDep``) instead of closing over the app's objects,
so a route module is plain functions and a test can swap ``app.state.jobs`` on a running app.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.config import Settings
from orchestrator.controller import Controller, TenantRef
from orchestrator.db.store import Store
from orchestrator.errors import Unauthorized
from orchestrator.protocols import JobServer


async def get_controller(request: Request) -> Controller:
    return request.app.state.controller


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(controller: ControllerDep) -> Store:
    return controller.store


async def get_jobs(request: Request) -> JobServer | None:
    """The job server evaluation grids run on; ``None`` when this server has none (TTS_JOBS_ADDRESS)."""
    return request.app.state.jobs


class Caller:
    """Whoever sent the request, known by its bearer key once :meth:`tenant` is awaited.

    Resolving the key is left to the route so that it can refuse a bad body or parameter (400) before it
    refuses a missing key (401): clients have always seen that order."""

    def __init__(self, store: Store, authorization: str, *, required: bool) -> None:
        self._store, self._authorization, self._required = store, authorization, required

    async def tenant(self) -> TenantRef | None:
        """The tenant of the bearer key; ``None`` for no key or (unless keys are required) an unknown one.
        SDKs always send some key, so an unrequired unknown one cannot be told apart from a typo.

        Raises ``Unauthorized`` when keys are required and this one is missing or unknown."""
        header = self._authorization
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        tenant = await self._store.tenants.for_key(key) if key else None
        if tenant is None:
            if self._required:
                raise Unauthorized("a valid API key is required: send it as `Authorization: Bearer <key>`")
            return None
        return TenantRef.of(tenant)


async def get_caller(request: Request, store: StoreDep, settings: SettingsDep) -> Caller:
    return Caller(store, request.headers.get("authorization", ""), required=settings.require_api_key)


async def get_tenant(caller: CallerDep) -> TenantRef | None:
    """The caller's tenant, resolved before the route runs: for routes with nothing to refuse first."""
    return await caller.tenant()


ControllerDep = Annotated[Controller, Depends(get_controller)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
JobsDep = Annotated[JobServer | None, Depends(get_jobs)]
CallerDep = Annotated[Caller, Depends(get_caller)]
TenantDep = Annotated[TenantRef | None, Depends(get_tenant)]
