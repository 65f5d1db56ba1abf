"""Liveness and Prometheus metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ControllerDep, SettingsDep
from api.errors import ERRORS
from api.schemas import EngineView, Health
from orchestrator.errors import Unauthorized

router = APIRouter()


@router.get("/healthz")
async def healthz(controller: ControllerDep) -> Health:
    """Liveness (it answers once the API serves), and what is ready: every engine replica's state (the
    policy's are ready before the API serves; other roles may still be loading or have failed to start)."""
    engines = controller.tools.engines
    views = [EngineView(name=e.name, role=e.role, state=e.state, since_s=e.since_s, error=e.error) for e in (engines.status() if engines else [])]
    return Health(
        models=sorted(controller.models),
        strategies=sorted(controller.strategies),
        engines=views,
        ready=all(e.state == "ready" for e in views),
        no_chat_template=sorted(controller.no_chat_template),
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}, 401: ERRORS[401]})
async def metrics(controller: ControllerDep, settings: SettingsDep, authorization: Annotated[str, Header()] = "") -> Response:
    """Prometheus exposition. While API keys are in force it needs the scraper's own key (TTS_METRICS_KEY):
    the numbers are the whole server's, so no tenant's key opens them."""
    if settings.require_api_key:
        want = settings.metrics_key.get_secret_value() if settings.metrics_key else None
        got = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if want is None or not hmac.compare_digest(got.encode(), want.encode()):
            raise Unauthorized(
                "GET /metrics needs `Authorization: Bearer <TTS_METRICS_KEY>` while API keys are in force"
                + ("" if want else "; this server has no TTS_METRICS_KEY set")
            )
    return Response(controller.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
