"""The HTTP API: OpenAI-compatible reasoning endpoints in front of the controller, plus native ones.

    POST /v1/chat/completions, /v1/completions   the OpenAI shapes (streaming included)
    POST /v1/reason                              the whole trace of one request
    GET  /v1/requests, /v1/requests/{id}         the caller's recorded requests
    DELETE /v1/requests/{id}                     cancel a running request
    GET  /v1/models, /healthz, /metrics          what is served; Prometheus metrics
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.dashboard import add_dashboard
from api.jobs import add_jobs
from api.schemas import (
    CandidateBody,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorDetail,
    ModelCard,
    ModelList,
    OpenAIFields,
    PromptTokensDetails,
    ReasoningFields,
    ReasonRequest,
    ReasonResponse,
    RequestList,
    RequestView,
    StageUsage,
    TTSInfo,
    UsageBody,
)
from orchestrator.budget import Budget
from orchestrator.config import Settings
from orchestrator.controller import Controller, ReasoningRequest, ReasoningResponse, TenantRef
from orchestrator.db.models import RequestRecord
from orchestrator.errors import Conflict, InvalidRequest, TTSError, Unauthorized
from orchestrator.protocols import JobServer
from orchestrator.types import Usage

log = logging.getLogger(__name__)

MAX_N_CHOICES = 1
DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks that its client is still there

_ERROR = {"model": ErrorBody, "description": "An error, in OpenAI's shape"}
ERRORS: dict[int | str, dict[str, Any]] = {s: _ERROR for s in (400, 401, 404, 409, 413, 429, 500, 502, 503, 504)}
STREAMED = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "JSON, or server-sent events when `stream` is true"}}


def _error(status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None, retry_after: float | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code))
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _error_of(exc: TTSError) -> JSONResponse:
    kind = "invalid_request_error" if isinstance(exc, InvalidRequest) else "rate_limit_error" if exc.status == 429 else "server_error"
    return _error(exc.status, exc.message, type_=kind, param=exc.param, code=exc.code, retry_after=exc.retry_after)


def _validation_error_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first: dict[str, Any] = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    return (f"{where}: {first['msg']}" if where else first["msg"]), where or None


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413 before they are read whole, whether or not they declare
    their length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading; whatever it answers is dropped
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise
            # The app failed on the body it was denied (a client disconnect, to it): already answered 413.

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, f"request body is over this server's limit of {self.limit} bytes", type_="invalid_request_error", code="request_too_large")
        await response(scope, receive, send)


def get_controller(request: Request) -> Controller:
    return request.app.state.controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def _stage_usage(by: dict[str, Usage]) -> dict[str, StageUsage]:
    return {k: StageUsage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens) for k, u in by.items()}


def _usage(u: Usage, verifier_tokens: int, cost_usd: float, **extra: Any) -> UsageBody:
    return UsageBody(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens),
        verifier_tokens=verifier_tokens,
        all_tokens=u.total_tokens + verifier_tokens,
        cost_usd=cost_usd,
        **extra,
    )


def usage_body(out: ReasoningResponse) -> UsageBody:
    by = {"by_role": _stage_usage(dict(out.by_role)), "by_stage": _stage_usage(dict(out.by_stage))}
    return _usage(out.usage, out.verifier_tokens, out.cost_usd, sequential_tokens=out.sequential_tokens, **by)


def tts_info(out: ReasoningResponse) -> TTSInfo:
    r = out.result
    return TTSInfo(
        request_id=out.request_id,
        strategy=out.strategy,
        answer=r.answer,
        subcalls=out.subcalls,
        latency_s=round(out.latency_s, 4),
        verifier_tokens=out.verifier_tokens,
        cost_usd=out.cost_usd,
        sequential_tokens=out.sequential_tokens,
        usage_by_stage=_stage_usage(dict(out.by_stage)),
        usage_by_role=_stage_usage(dict(out.by_role)),
        candidates=[
            CandidateBody(text=c.text, answer=c.answer, completion_tokens=c.tokens, finish_reason=c.finish_reason, score=c.score) for c in r.candidates
        ],
        trace=list(r.trace),
        info=r.info,
        events=[dict(e) for e in out.events],
    )


def request_view(rec: RequestRecord) -> RequestView:
    return RequestView(
        id=rec.id,
        state=rec.state,  # type: ignore[arg-type]
        model=rec.model,
        strategy=rec.strategy,
        params=rec.params,
        answer=rec.answer,
        text=rec.text,
        finish_reason=rec.finish_reason,
        error=rec.error,
        usage=_usage(Usage(rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens), rec.verifier_tokens, rec.cost_usd),
        subcalls=len(rec.subcalls),
        created_at=rec.created_at.isoformat(),
        finished_at=rec.finished_at.isoformat() if rec.finished_at else None,
    )


def _content_pieces(text: str) -> list[str]:
    """The answer as content deltas: one per line (a reasoning step), newlines kept."""
    return text.splitlines(keepends=True) or [""]


def create_app(settings: Settings, controller: Controller, jobs: JobServer | None = None) -> FastAPI:
    """Build the app around a ready controller (engines and database are started by the caller)."""
    app = FastAPI(title="Test-time scaling service", version="0.1.0")
    app.state.controller = controller
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(TTSError)
    async def _tts_error(_: Request, exc: TTSError) -> JSONResponse:
        return _error_of(exc)

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

    def to_request(body: ReasoningFields, *, messages: tuple[dict[str, str], ...] = (), prompt: str | None = None) -> ReasoningRequest:
        """The controller's request: the strategy from ``strategy``, else from ``<strategy>:<model>``."""
        model, strategy = body.model, body.strategy
        prefix, sep, rest = body.model.partition(":")
        if sep and (prefix in controller.strategies or prefix == "auto"):
            if strategy is not None and strategy != prefix:
                raise InvalidRequest(f"model {body.model!r} names strategy {prefix!r} but `strategy` is {strategy!r}", param="strategy")
            model, strategy = rest, prefix
        return ReasoningRequest(
            model=model,
            messages=messages,
            prompt=prompt,
            strategy=strategy or settings.default_strategy,
            params=body.strategy_params,
            max_total_tokens=body.max_total_tokens,
            budget=Budget(**body.budget.model_dump()) if body.budget else None,
        )

    def check_openai(body: OpenAIFields) -> None:
        if not 1 <= body.n <= MAX_N_CHOICES:
            raise InvalidRequest(f"n={body.n}: only n=1 choice is returned; the number of samples is strategy_params.n", param="n")

    async def run_attached(request: Request, call: Callable[[], Awaitable[ReasoningResponse]]) -> ReasoningResponse:
        """Run ``call`` while the client is connected: a client that goes away cancels it (its engine calls are
        aborted), and so does ``DELETE /v1/requests/{id}`` (then the answer is a 409)."""
        task = asyncio.ensure_future(call())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    task.cancel()
                    await asyncio.wait({task})
                    break
        except asyncio.CancelledError:  # the server itself is cancelling this handler
            task.cancel()
            raise
        if task.cancelled():
            raise Conflict("the request was cancelled before it finished", param=None)
        return task.result()

    async def streamed(request: Request, req: ReasoningRequest, tenant: TenantRef | None, body: OpenAIFields, *, chat: bool) -> Response:
        """Server-sent events in OpenAI's chunk format. Progress events ride in an extension field
        (``tts_progress``) of chunks with an empty delta; then the answer, a line per delta; then the finish
        reason; then, if asked, the usage in a chunk with no choices. Errors before the request starts are
        ordinary JSON errors; once it has started they are an ``error`` event before ``[DONE]``."""
        queue: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()
        task = asyncio.ensure_future(controller.reason(req, tenant=tenant, on_event=queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        first = await queue.get()
        if first is None:  # refused or failed before it was recorded: a plain HTTP error
            return await _finished_error(task)
        request_id = str(first["request_id"])
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(*, delta: dict[str, Any] | None = None, text: str | None = None, finish: str | None = None, **extra: Any) -> str:
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            payload = {"id": request_id, "object": kind, "created": created, "model": body.model, "choices": [choice], **extra}
            return f"data: {json.dumps(payload)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                if chat:
                    yield chunk(delta={"role": "assistant", "content": ""})
                yield chunk(tts_progress=first)
                while (event := await queue.get()) is not None:
                    yield chunk(tts_progress=event)
                try:
                    out = task.result()
                except asyncio.CancelledError:
                    out = None
                    err: dict[str, Any] = {"message": "the request was cancelled", "type": "invalid_request_error", "code": "conflict"}
                except TTSError as e:
                    out = None
                    err = {"message": e.message, "type": "server_error", "code": e.code}
                except Exception as e:  # noqa: BLE001 - reported to the client, logged here
                    log.exception("streamed request %s failed", request_id)
                    out = None
                    err = {"message": f"internal error: {type(e).__name__}", "type": "server_error", "code": "internal_error"}
                if out is None:
                    yield f"data: {json.dumps({'error': err})}\n\n"
                else:
                    for piece in _content_pieces(out.result.text):
                        yield chunk(delta={"content": piece}, text=piece)
                    yield chunk(finish=out.result.finish_reason, tts=tts_info(out).model_dump())
                    if body.stream_options is not None and body.stream_options.include_usage:
                        payload = {"id": request_id, "object": kind, "created": created, "model": body.model, "choices": [], "usage": usage_body(out).model_dump()}
                        yield f"data: {json.dumps(payload)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                # The client left (or the response ended): nothing may keep generating for it.
                if not task.done():
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task

        headers = {"Cache-Control": "no-cache", "X-Request-Id": request_id}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _finished_error(task: asyncio.Future[ReasoningResponse]) -> Response:
        exc = task.exception()
        if isinstance(exc, TTSError):
            return _error_of(exc)
        raise exc  # type: ignore[misc]

    async def caller(request: Request) -> TenantRef | None:
        return await _tenant(controller, request, required=settings.require_api_key)

    add_dashboard(app, controller, caller)
    add_jobs(app, controller, settings, caller, jobs)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "models": sorted(controller.models), "strategies": sorted(controller.strategies)}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    async def metrics() -> Response:
        return Response(controller.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        """Every served model, and every `<strategy>:<model>` this server can run with default parameters."""
        have = controller.available()
        ids = sorted(controller.models)
        for name, spec in sorted(controller.strategies.items()):
            if spec.needs(spec.params()) <= have:
                ids += [f"{name}:{m}" for m in sorted(controller.models)]
        ids += [f"auto:{m}" for m in sorted(controller.models)]
        return ModelList(data=[ModelCard(id=i) for i in ids])

    async def openai_answer(body: OpenAIFields, req: ReasoningRequest, request: Request, *, chat: bool) -> Any:
        """A chat or text completion: streamed, or one JSON body with the strategy's answer as its choice."""
        tenant = await caller(request)
        if body.stream:
            return await streamed(request, req, tenant, body, chat=chat)
        out = await run_attached(request, lambda: controller.reason(req, tenant=tenant))
        r = out.result
        common = {"id": out.request_id, "created": int(time.time()), "model": body.model, "usage": usage_body(out), "tts": tts_info(out)}
        if chat:
            return ChatCompletionResponse(**common, choices=[Choice(index=0, message=ChoiceMessage(content=r.text), finish_reason=r.finish_reason)])
        return CompletionResponse(**common, choices=[CompletionChoice(index=0, text=r.text, finish_reason=r.finish_reason)])

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={**ERRORS, **STREAMED})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_openai(body)
        return await openai_answer(body, to_request(body, messages=tuple(m.model_dump() for m in body.messages)), request, chat=True)

    @app.post("/v1/completions", response_model=CompletionResponse, responses={**ERRORS, **STREAMED})
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_openai(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise InvalidRequest(f"prompt: send one prompt, not {len(prompts)} (one request runs one strategy)", param="prompt")
        return await openai_answer(body, to_request(body, prompt=prompts[0]), request, chat=False)

    @app.post("/v1/reason", response_model=ReasonResponse, responses=ERRORS)
    async def reason(body: ReasonRequest, request: Request) -> ReasonResponse:
        if (body.messages is None) == (body.prompt is None):
            raise InvalidRequest("send either `messages` or `prompt`", param="messages")
        messages = tuple(m.model_dump() for m in body.messages) if body.messages else ()
        req = to_request(body, messages=messages, prompt=body.prompt)
        tenant = await caller(request)
        out = await run_attached(request, lambda: controller.reason(req, tenant=tenant))
        info = tts_info(out)
        return ReasonResponse(**info.model_dump(), model=body.model, text=out.result.text, finish_reason=out.result.finish_reason, usage=usage_body(out))

    @app.get("/v1/requests", response_model=RequestList, responses=ERRORS)
    async def list_requests(request: Request, limit: int = 20) -> RequestList:
        """The caller's most recent requests, newest first (a key sees its tenant's; no key, the keyless ones)."""
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be between 1 and 1000", param="limit")
        tenant = await caller(request)
        recs = await asyncio.to_thread(controller.store.list_requests, tenant.id if tenant else None, limit=limit)
        return RequestList(data=[request_view(r) for r in recs])

    @app.get("/v1/requests/{request_id}", response_model=RequestView, responses=ERRORS)
    async def get_request(request_id: str, request: Request) -> RequestView:
        tenant = await caller(request)
        rec = await asyncio.to_thread(controller.lookup, request_id, tenant.id if tenant else None)
        return request_view(rec)

    @app.delete("/v1/requests/{request_id}", response_model=RequestView, responses=ERRORS)
    async def cancel_request(request_id: str, request: Request) -> RequestView:
        """Cancel a queued or running request, on whichever replica runs it (409 if it has ended)."""
        tenant = await caller(request)
        return request_view(await controller.cancel(request_id, tenant.id if tenant else None))

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
    return TenantRef.of(tenant)
