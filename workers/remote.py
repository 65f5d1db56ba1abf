"""The remote backend: an external `vllm serve`, reached over its OpenAI-compatible HTTP API.

:class:`RemoteEngine` is a :class:`workers.backend.Backend` itself (embedding is not served). Only
failures to connect are retried (the server never saw the call); anything after the request was sent is an
error, since a retry could sample twice and bill twice. Closing a call's connection makes vLLM abort it, which
is how ``abort`` and cancellation work here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import httpx

from orchestrator.errors import ConfigError, EngineError, EngineTimeout, InvalidRequest, WorkerDied
from orchestrator.types import Completion, EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta, Usage
from workers.backend import Unsupported
from workers.config import RoleConfig

log = logging.getLogger(__name__)


class RemoteEngine(Unsupported):
    """One connection pool to the server at ``base_url`` serving ``model``; ``name`` is this replica's."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        name: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        connect_retries: int = 2,
        max_connections: int = 64,
        score_top_k: int = 20,
    ) -> None:
        self.name = name
        self.model = model
        self._retries = connect_retries
        self._top_k = score_top_k
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    # ------------------------------------------------------------------------------------------ transport

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self._retries + 1):
            try:
                resp = await self._client.post(path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as err:
                if attempt == self._retries:
                    raise WorkerDied(f"cannot connect to {self._client.base_url}: {err}", worker=self.name) from None
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            except httpx.TimeoutException as err:
                raise EngineTimeout(f"{path} timed out: {err!r}", worker=self.name) from None
            except httpx.HTTPError as err:
                raise WorkerDied(f"{path} failed: {err!r}", worker=self.name) from None
            return _checked(resp, self.name)
        raise AssertionError("unreachable")

    async def _tracked(self, request_id: str, coro: Any) -> Any:
        """Run ``coro`` as a task ``abort`` can cancel (which closes its connection)."""
        task = asyncio.ensure_future(coro)
        self._tasks[request_id] = task
        try:
            return await task
        finally:
            self._tasks.pop(request_id, None)

    # ------------------------------------------------------------------------------------------ calls

    async def start(self) -> None:
        await self.stats()  # fails fast with WorkerDied when the server is unreachable

    def _body(self, spec: SamplingSpec) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": spec.prompt if isinstance(spec.prompt, str) else list(spec.prompt),
            "n": spec.n,
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "stop": list(spec.stop),
            "ignore_eos": spec.ignore_eos,
            "return_token_ids": True,
        }
        if spec.seed is not None:
            body["seed"] = spec.seed
        if spec.logprobs:
            body["logprobs"] = 0
        return body

    async def generate(self, spec: SamplingSpec) -> Generation:
        rid = spec.request_id or uuid.uuid4().hex
        data = await self._tracked(rid, self._post("/v1/completions", self._body(spec)))
        completions = []
        for c in sorted(data["choices"], key=lambda c: c["index"]):
            lp = c.get("logprobs") or {}
            completions.append(
                Completion(
                    text=c["text"],
                    tokens=len(c.get("token_ids") or ()),
                    finish_reason=c.get("finish_reason") or "abort",
                    token_logprobs=tuple(lp.get("token_logprobs") or ()) if spec.logprobs else None,
                    stop_reason=c.get("stop_reason"),
                )
            )
        return Generation(completions=tuple(completions), usage=_usage(data.get("usage") or {}), worker=self.name)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        body = self._body(spec) | {"stream": True}
        counts: dict[int, int] = {}
        try:
            async with self._client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    _checked(resp, self.name)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    for c in chunk.get("choices", ()):
                        i = c["index"]
                        counts[i] = counts.get(i, 0) + len(c.get("token_ids") or ())
                        yield StreamDelta(index=i, text=c.get("text", ""), tokens=counts[i], finish_reason=c.get("finish_reason"))
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise WorkerDied(f"cannot connect to {self._client.base_url}: {err}", worker=self.name) from None
        except httpx.TimeoutException as err:
            raise EngineTimeout(f"stream timed out: {err!r}", worker=self.name) from None

    async def abort(self, request_ids: Sequence[str]) -> None:
        for rid in request_ids:
            task = self._tasks.get(rid)
            if task is not None:
                task.cancel()

    async def score(self, spec: ScoreSpec) -> Scores:
        body = {
            "model": self.model,
            "prompt": spec.prompt if isinstance(spec.prompt, str) else list(spec.prompt),
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": self._top_k,
            "return_token_ids": True,
        }
        rid = spec.request_id or uuid.uuid4().hex
        data = await self._tracked(rid, self._post("/v1/completions", body))
        choice = data["choices"][0]
        ids = list(choice.get("prompt_token_ids") or ())
        rows = (choice.get("prompt_logprobs") or [])[1:]
        if len(ids) < 2 or not 0 <= spec.start < len(ids) - 1:
            raise InvalidRequest(f"{self.name}: score start {spec.start} outside the {len(ids)}-token prompt")
        picked = [{int(k): v["logprob"] for k, v in row.items()} for row in rows[spec.start :]]
        logprobs = tuple(row[ids[spec.start + i + 1]] for i, row in enumerate(picked))
        candidates = tuple(tuple(row.get(t, -math.inf) for t in spec.candidates) for row in picked) if spec.candidates else ()
        return Scores(tuple(ids), spec.start, logprobs, candidates, _usage(data.get("usage") or {}), worker=self.name)

    async def tokenize(self, text: str) -> list[int]:
        return list((await self._post("/tokenize", {"model": self.model, "prompt": text}))["tokens"])

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        # The server owns the chat template: have it render to ids, then back to text.
        ids = (await self._post("/tokenize", {"model": self.model, "messages": list(messages), "add_generation_prompt": True}))["tokens"]
        return (await self._post("/detokenize", {"model": self.model, "tokens": ids}))["prompt"]

    async def stats(self) -> EngineStats:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            resp = await self._client.get("/metrics")
        except httpx.HTTPError as err:
            raise WorkerDied(f"metrics unavailable: {err!r}", worker=self.name) from None
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return EngineStats(
            worker=self.name,
            running=int(values.get("vllm:num_requests_running", 0)),
            waiting=int(values.get("vllm:num_requests_waiting", 0)),
            kv_blocks_total=0,  # not exported by the server; only the usage fraction is
            kv_blocks_used=0,
            prefix_cache_queries=int(values.get("vllm:prefix_cache_queries_total", 0)),
            prefix_cache_hits=int(values.get("vllm:prefix_cache_hits_total", 0)),
        )

    async def shutdown(self) -> None:
        await self._client.aclose()  # the server is not ours to stop


@dataclass(frozen=True)
class RemoteSpec:
    """A role served by the `vllm serve` at ``url`` under the model name ``model``; each of ``replicas`` is
    its own connection pool to it."""

    role: Role
    url: str
    model: str
    api_key: str | None = None
    replicas: int = 1

    @classmethod
    def from_config(cls, role: Role, rc: RoleConfig) -> RemoteSpec:
        if rc.url is None:
            raise ConfigError(f"role {role}: a remote engine needs `url`")
        return cls(role, url=rc.url, model=rc.served_model or role, api_key=rc.api_key, replicas=rc.replicas)

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> RemoteEngine:
        # No actor here: nothing to name cluster-wide or to restart; the server's lifetime is its own.
        return RemoteEngine(self.url, model=self.model, name=name, api_key=self.api_key)


def _checked(resp: httpx.Response, name: str) -> dict[str, Any]:
    if resp.status_code == 200:
        return resp.json()
    try:
        message = resp.json().get("error", {}).get("message") or resp.text
    except ValueError:
        message = resp.text
    if 400 <= resp.status_code < 500:
        raise InvalidRequest(f"{name}: server rejected the call ({resp.status_code}): {message}")
    raise EngineError(f"server error {resp.status_code}: {message}", worker=name)


def _usage(u: dict[str, Any]) -> Usage:
    details = u.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )
