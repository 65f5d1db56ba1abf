"""The body-size guard on its own (an ASGI app of one route; no engine needed)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request

from api.middleware import BodyLimit


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return BodyLimit(app, limit=1000)  # type: ignore[return-value]


def _post(content) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as c:
            return await c.post("/echo", content=content)

    return asyncio.run(go())


def test_bodies_up_to_the_limit_pass_and_larger_ones_get_413_declared_or_not():
    assert _post(b"x" * 1000).json() == {"bytes": 1000}
    declared = _post(b"x" * 1001)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"x" * 300

    streamed = _post(chunks())
    assert streamed.status_code == 413 and "limit of 1000 bytes" in streamed.json()["error"]["message"]
