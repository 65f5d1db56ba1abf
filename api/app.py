"""The HTTP API: an OpenAI-compatible reasoning endpoint in front of the controller."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import (
    CandidateBody,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceMessage,
    ErrorBody,
    ErrorDetail,
    PromptTokensDetails,
    StageUsage,
    TTSInfo,
    UsageBody,
)
from orchestrator.budget import Budget
from orchestrator.config import Settings
from orchestrator.controller import Controller, ReasoningRequest, TenantRef
from orchestrator.errors import InvalidRequest, TTSError, Unauthorized

log = logging.getLogger(__name__)

MAX_N_CHOICES = 1


def _error(status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump())


def _validation_error_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first: dict[str, Any] = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    return (f"{where}: {first['msg']}" if where else first["msg"]), where or None


def get_controller(request: Request) -> Controller:
    return request.app.state.controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def create_app(settings: Settings, controller: Controller) -> FastAPI:
    """Build the app around a ready controller (engines and database are started by the caller)."""
    app = FastAPI(title="Test-time scaling service", version="0.1.0")
    app.state.controller = controller
    app.state.settings = settings

    @app.exception_handler(TTSError)
    async def _tts_error(_: Request, exc: TTSError) -> JSONResponse:
        kind = "invalid_request_error" if isinstance(exc, InvalidRequest) else "server_error"
        return _error(exc.status, exc.message, type_=kind, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_error_message(exc)
        return _error(400, message, type_="invalid_request_error", param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), type_="invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(exc).__name__}", type_="server_error", code="internal_error")

    @app.get("/healthz")
    async def healthz(ctl: ControllerDep) -> dict[str, object]:
        return {"status": "ok", "models": sorted(ctl.models), "strategies": sorted(ctl.strategies)}

    @app.get("/v1/models")
    async def list_models(ctl: ControllerDep) -> dict[str, object]:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "tts"} for m in sorted(ctl.models)]}

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={400: {"model": ErrorBody}})
    async def chat_completions(body: ChatCompletionRequest, ctl: ControllerDep, request: Request) -> ChatCompletionResponse:
        if body.stream:
            raise InvalidRequest("stream=true is not supported yet; send stream=false", param="stream")
        if not 1 <= body.n <= MAX_N_CHOICES:
            raise InvalidRequest(
                f"n={body.n}: only n=1 choice is returned; the number of samples is strategy_params.n", param="n"
            )
        req = ReasoningRequest(
            model=body.model,
            messages=tuple(m.model_dump() for m in body.messages),
            strategy=body.strategy or settings.default_strategy,
            params=body.strategy_params,
            max_total_tokens=body.max_total_tokens,
            budget=Budget(**body.budget.model_dump()) if body.budget else None,
        )
        out = await ctl.reason(req, tenant=await _tenant(ctl, request, required=settings.require_api_key))
        r = out.result
        return ChatCompletionResponse(
            id=out.request_id,
            created=int(time.time()),
            model=out.model,
            choices=[Choice(index=0, message=ChoiceMessage(content=r.text), finish_reason=r.finish_reason)],
            usage=UsageBody(
                prompt_tokens=out.usage.prompt_tokens,
                completion_tokens=out.usage.completion_tokens,
                total_tokens=out.usage.total_tokens,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=out.usage.cached_tokens),
            ),
            tts=TTSInfo(
                request_id=out.request_id,
                strategy=out.strategy,
                answer=r.answer,
                subcalls=out.subcalls,
                latency_s=round(out.latency_s, 4),
                verifier_tokens=out.verifier_tokens,
                cost_usd=out.cost_usd,
                sequential_tokens=out.sequential_tokens,
                usage_by_stage={
                    k: StageUsage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens)
                    for k, u in out.by_stage.items()
                },
                candidates=[
                    CandidateBody(text=c.text, answer=c.answer, completion_tokens=c.tokens, finish_reason=c.finish_reason, score=c.score)
                    for c in r.candidates
                ],
                trace=list(r.trace),
                info=r.info,
            ),
        )

    return app


async def _tenant(ctl: Controller, request: Request, *, required: bool) -> TenantRef | None:
    """The tenant of the request's bearer key. Unknown keys are anonymous unless keys are required (SDKs
    always send some key, so an unrequired one cannot be told apart from a typo)."""
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    tenant = await asyncio.to_thread(ctl.store.tenant_for_key, key) if key else None
    if tenant is None:
        if required:
            raise Unauthorized("a valid API key is required: send it as `Authorization: Bearer <key>`")
        return None
    return TenantRef(tenant.id, tenant.name, tenant.tokens_per_day, tenant.max_concurrent)
