"""Server-sent events for ``stream: true``, in OpenAI's chunk format.

Progress events ride in an extension field (``tts_progress``) of chunks with an empty delta; then the answer,
a line per delta (a reasoning profile's reasoning span first, as ``reasoning_content`` deltas); then the
finish reason with the strategy's report (``tts``); then, if asked, the usage in a chunk with no choices;
then ``[DONE]``. Errors before the request starts are ordinary JSON errors; once it has started they are
an ``error`` event before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress
from typing import Any, AsyncIterator

from fastapi.responses import Response, StreamingResponse

from api.errors import error_of
from api.schemas import OpenAIFields
from api.views import tts_info, usage_body
from orchestrator.controller import Controller, ReasoningRequest, ReasoningResponse, TenantRef
from orchestrator.errors import TTSError
from orchestrator.profile import ModelProfile

log = logging.getLogger(__name__)


def content_pieces(text: str) -> list[str]:
    """The answer as content deltas: one per line (a reasoning step), newlines kept."""
    return text.splitlines(keepends=True) or [""]


def answer_deltas(text: str, profile: ModelProfile, *, chat: bool) -> list[dict[str, str]]:
    """The answer as deltas, a line each. In a chat with a reasoning profile, the reasoning span comes first
    as ``reasoning_content`` deltas, then what follows it as ``content`` ones, the order in which vLLM's
    reasoning parsers and DeepSeek's API stream them; otherwise the whole text is content."""
    if not chat or profile.reasoning == "none":
        return [{"content": p} for p in content_pieces(text)]
    reasoning, final = profile.split_reasoning(text)
    thinking = [{"reasoning_content": p} for p in content_pieces(reasoning)] if reasoning else []
    return thinking + [{"content": p} for p in content_pieces(final)]


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def stream(controller: Controller, req: ReasoningRequest, *, tenant: TenantRef | None, body: OpenAIFields, chat: bool) -> Response:
    """Run ``req`` and answer with its events: chat chunks when ``chat``, else text-completion ones. The
    request runs as long as the client reads; a client that leaves cancels it (its engine calls abort)."""
    queue: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()
    task = asyncio.ensure_future(controller.reason(req, tenant=tenant, on_event=queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    first = await queue.get()
    if first is None:  # refused or failed before it was recorded: a plain HTTP error
        return _refusal(task)
    request_id = str(first["request_id"])
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(*, delta: dict[str, Any] | None = None, text: str | None = None, finish: str | None = None, **extra: Any) -> str:
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _event({"id": request_id, "object": kind, "created": created, "model": body.model, "choices": [choice], **extra})

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
                yield _event({"error": err})
            else:
                for delta in answer_deltas(out.result.text, controller.tools.profile, chat=chat):
                    yield chunk(delta=delta, text=delta.get("content"))
                yield chunk(finish=out.result.finish_reason, tts=tts_info(out).model_dump())
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield _event({"id": request_id, "object": kind, "created": created, "model": body.model, "choices": [], "usage": usage_body(out).model_dump()})
            yield "data: [DONE]\n\n"
        finally:
            # The client left (or the response ended): nothing may keep generating for it.
            if not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    headers = {"Cache-Control": "no-cache", "X-Request-Id": request_id}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _refusal(task: asyncio.Future[ReasoningResponse]) -> Response:
    """The error of a request that ended before it was recorded, as the JSON error it would have had without
    ``stream``; anything but the service's own errors propagates to the app's handler (a 500)."""
    try:
        task.result()
    except TTSError as exc:
        return error_of(exc)
    # The controller announces every request it records before running it, so this cannot succeed silently.
    raise RuntimeError("the request finished without being recorded")
