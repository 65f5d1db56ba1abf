"""The reasoning endpoints: OpenAI's chat and text completions (streaming included) and the model list, plus
the native ``POST /v1/reason``, which returns the whole trace of one request. All three run one strategy per
request, named by ``strategy`` or by the model name's prefix (``<strategy>:<model>``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

from fastapi import APIRouter, Request

from api.deps import Caller, CallerDep, ControllerDep, SettingsDep
from api.errors import ERRORS
from api.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Message,
    ModelCard,
    ModelList,
    OpenAIFields,
    ReasoningFields,
    ReasonRequest,
    ReasonResponse,
)
from api.sampling import strategy_params
from api.sse import stream
from api.views import chat_message, tts_info, usage_body
from orchestrator.budget import Budget
from orchestrator.config import Settings
from orchestrator.controller import Controller, ReasoningRequest, ReasoningResponse
from orchestrator.errors import Conflict, InvalidRequest

MAX_N_CHOICES = 1
DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks that its client is still there
STREAMED = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "JSON, or server-sent events when `stream` is true"}}

router = APIRouter()


def to_request(
    body: ReasoningFields, controller: Controller, settings: Settings, *, messages: tuple[dict[str, str], ...] = (), prompt: str | None = None
) -> ReasoningRequest:
    """The controller's request: the strategy from ``strategy``, else from ``<strategy>:<model>``, else the
    server's default; its parameters ``strategy_params`` with OpenAI's sampling fields applied (api/sampling.py)."""
    model, strategy = body.model, body.strategy
    prefix, sep, rest = body.model.partition(":")
    if sep and (prefix in controller.strategies or prefix == "auto"):
        if strategy is not None and strategy != prefix:
            raise InvalidRequest(f"model {body.model!r} names strategy {prefix!r} but `strategy` is {strategy!r}", param="strategy")
        model, strategy = rest, prefix
    strategy = strategy or settings.default_strategy
    params: Mapping[str, Any] = body.strategy_params
    fields: Mapping[str, str] = {}
    stop: tuple[str, ...] = ()
    if isinstance(body, OpenAIFields):
        spec = controller.strategies.get(strategy)
        params, fields = strategy_params(body, strategy, spec.params if spec else None)
        stop = tuple(s for s in ([body.stop] if isinstance(body.stop, str) else body.stop or []) if s)  # "" and [] are no stop
    return ReasoningRequest(
        model=model,
        messages=messages,
        prompt=prompt,
        strategy=strategy,
        params=params,
        fields=fields,
        stop=stop,
        max_total_tokens=body.max_total_tokens,
        budget=Budget(**body.budget.model_dump()) if body.budget else None,
    )


def chat_messages(messages: Sequence[Message]) -> tuple[dict[str, str], ...]:
    """The messages as the chat template takes them: text parts joined by newlines (as vLLM joins them),
    ``developer`` (OpenAI's newer name for it) as ``system``. Raises ``InvalidRequest`` naming a part that is
    not text: these models read nothing else."""
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            texts: list[str] = []
            for j, part in enumerate(m.content):
                where = f"messages.{i}.content.{j}"
                if part.type != "text":
                    raise InvalidRequest(f"{where}: content parts of type {part.type!r} are not supported; send text parts", param=f"{where}.type")
                if part.text is None:
                    raise InvalidRequest(f"{where}: a text part needs `text`", param=f"{where}.text")
                texts.append(part.text)
            content = "\n".join(texts)
        else:
            content = m.content or ""
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return tuple(out)


def _check_openai(body: OpenAIFields) -> None:
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


async def _answer(body: OpenAIFields, req: ReasoningRequest, request: Request, controller: Controller, caller: Caller, *, chat: bool) -> Any:
    """A chat or text completion: streamed, or one JSON body with the strategy's answer as its choice."""
    tenant = await caller.tenant()
    if body.stream:
        return await stream(controller, req, tenant=tenant, body=body, chat=chat)
    out = await run_attached(request, lambda: controller.reason(req, tenant=tenant))
    r = out.result
    common = {"id": out.request_id, "created": int(time.time()), "model": body.model, "usage": usage_body(out), "tts": tts_info(out)}
    if chat:
        message = chat_message(r.text, controller.tools.profile)
        return ChatCompletionResponse(**common, choices=[Choice(index=0, message=message, finish_reason=r.finish_reason)])
    return CompletionResponse(**common, choices=[CompletionChoice(index=0, text=r.text, finish_reason=r.finish_reason)])


@router.get("/v1/models", response_model=ModelList)
async def list_models(controller: ControllerDep) -> ModelList:
    """Every served model, and every `<strategy>:<model>` this server can run now with default parameters;
    ``loading`` lists those it will run once the engines they need have loaded."""
    have, ready = controller.available(), controller.tools.ready()
    models = sorted(controller.models)
    cards, loading = [(m, m) for m in models], []
    for name, spec in sorted(controller.strategies.items()):
        needs = spec.needs(spec.params())
        if needs <= ready:
            cards += [(f"{name}:{m}", m) for m in models]
        elif needs <= have:
            loading += [f"{name}:{m}" for m in models]
    cards += [(f"auto:{m}", m) for m in models]
    return ModelList(data=[ModelCard(id=i, chat_template=m not in controller.no_chat_template) for i, m in cards], loading=loading)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={**ERRORS, **STREAMED})
async def chat_completions(body: ChatCompletionRequest, request: Request, controller: ControllerDep, settings: SettingsDep, caller: CallerDep) -> Any:
    _check_openai(body)
    req = to_request(body, controller, settings, messages=chat_messages(body.messages))
    return await _answer(body, req, request, controller, caller, chat=True)


@router.post("/v1/completions", response_model=CompletionResponse, responses={**ERRORS, **STREAMED})
async def completions(body: CompletionRequest, request: Request, controller: ControllerDep, settings: SettingsDep, caller: CallerDep) -> Any:
    _check_openai(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise InvalidRequest(f"prompt: send one prompt, not {len(prompts)} (one request runs one strategy)", param="prompt")
    return await _answer(body, to_request(body, controller, settings, prompt=prompts[0]), request, controller, caller, chat=False)


@router.post("/v1/reason", response_model=ReasonResponse, responses=ERRORS)
async def reason(body: ReasonRequest, request: Request, controller: ControllerDep, settings: SettingsDep, caller: CallerDep) -> ReasonResponse:
    if (body.messages is None) == (body.prompt is None):
        raise InvalidRequest("send either `messages` or `prompt`", param="messages")
    messages = chat_messages(body.messages) if body.messages else ()
    req = to_request(body, controller, settings, messages=messages, prompt=body.prompt)
    tenant = await caller.tenant()
    out = await run_attached(request, lambda: controller.reason(req, tenant=tenant))
    info = tts_info(out)
    return ReasonResponse(**info.model_dump(), model=body.model, text=out.result.text, finish_reason=out.result.finish_reason, usage=usage_body(out))
