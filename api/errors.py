"""Errors as HTTP: every failure leaves the API as OpenAI's error body, ``{"error": {message, type, param, code}}``.

The service's own errors (the ``TTSError`` tree of orchestrator/errors.py) keep their status, code and
``Retry-After``; a body that fails validation is a 400 naming the field; an unexpected exception is a 500
that names only its type (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Coroutine

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorBody, ErrorDetail
from orchestrator.errors import InvalidRequest, TTSError

log = logging.getLogger(__name__)

_ERROR = {"model": ErrorBody, "description": "An error, in OpenAI's shape"}
# The statuses a reasoning route may answer with, for its OpenAPI `responses`.
ERRORS: dict[int | str, dict[str, Any]] = {s: _ERROR for s in (400, 401, 404, 409, 413, 429, 500, 502, 503, 504)}


def error_response(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    """An error body; ``retry_after`` (seconds, truncated to whole ones) becomes the ``Retry-After`` header."""
    body = ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code))
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def error_of(exc: TTSError) -> JSONResponse:
    """The response for one of the service's errors: its status, code, param and retry hint."""
    kind = "invalid_request_error" if isinstance(exc, InvalidRequest) else "rate_limit_error" if exc.status == 429 else "server_error"
    return error_response(exc.status, exc.message, type_=kind, param=exc.param, code=exc.code, retry_after=exc.retry_after)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first: dict[str, Any] = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    return (f"{where}: {first['msg']}" if where else first["msg"]), where or None


async def _tts_error(_: Request, exc: TTSError) -> JSONResponse:
    return error_of(exc)


async def _bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc)
    return error_response(400, message, type_="invalid_request_error", param=param, code="invalid_request")


async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Starlette's own refusals (unknown path, wrong method) in the same shape as ours.
    return error_response(exc.status_code, str(exc.detail), type_="invalid_request_error")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(500, f"internal error: {type(exc).__name__}", type_="server_error", code="internal_error")


# FastAPI's `exception_handlers=` argument: each handler is called with the exception type it is keyed by.
HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    TTSError: _tts_error,
    RequestValidationError: _bad_body,
    StarletteHTTPException: _http,
    Exception: _unexpected,
}
