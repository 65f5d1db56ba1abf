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
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Sequence

import httpx

from orchestrator.errors import BudgetExceeded, ConfigError, EngineError, EngineTimeout, ContextTooLong, InvalidRequest, NoChatTemplate, WorkerDied
from orchestrator.types import Completion, EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta, TokenClasses, Usage
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
        role: str | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.role = role or name.rpartition("-")[0] or name
        # Learnt from the server at start: its context window, and the BOS text its tokenizer adds (if any).
        self.max_model_len: int | None = None
        self._bos: str | None = None
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
        await self._learn_server()

    async def _learn_server(self) -> None:
        """The served model's max_model_len (GET /v1/models) and its tokenizer's BOS text, if it adds one."""
        try:
            resp = await self._client.get("/v1/models")
            cards = _checked(resp, self.name).get("data") or []
        except httpx.HTTPError as err:
            raise WorkerDied(f"/v1/models failed: {err!r}", worker=self.name) from None
        card = next((c for c in cards if c.get("id") == self.model), None)
        if card is None:
            served = ", ".join(str(c.get("id")) for c in cards) or "none"
            raise EngineError(f"the server does not serve model {self.model!r} (it serves: {served})", worker=self.name)
        self.max_model_len = card.get("max_model_len")
        bos = (await self._post("/tokenize", {"model": self.model, "prompt": "", "add_special_tokens": True}))["tokens"]
        if bos:
            self._bos = (await self._post("/detokenize", {"model": self.model, "tokens": list(bos)}))["prompt"] or None

    def _special(self, text: str) -> bool:
        """Whether the server should add special tokens to ``text``: not when it already begins with the BOS
        (a prompt rendered by a chat template that writes it), or it gets a second one."""
        return not (self._bos and text.startswith(self._bos))

    def _fits(self, prompt_tokens: int | None, *, room: int = 1) -> None:
        if self.max_model_len is not None and prompt_tokens is not None and prompt_tokens > self.max_model_len - room:
            raise ContextTooLong(f"{self.name}: the prompt is {prompt_tokens} tokens; role {self.role} has max_model_len {self.max_model_len}")

    async def _post_call(self, path: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """A call's POST, with the server's refusal of a prompt over its context named as ours."""
        try:
            return await self._tracked(request_id, self._post(path, body))
        except InvalidRequest as err:
            raise self._named(err) from None

    def _named(self, err: InvalidRequest) -> InvalidRequest:
        """The server's refusal of a prompt over its context, as ours (naming the role); other refusals as they are."""
        if "context length" in err.message or "max_model_len" in err.message:
            return ContextTooLong(f"{err.message} (role {self.role}, max_model_len {self.max_model_len})")
        return err

    def _body(self, spec: SamplingSpec) -> dict[str, Any]:
        ids = None if isinstance(spec.prompt, str) else list(spec.prompt)
        self._fits(len(ids) if ids is not None else None)
        max_tokens = spec.max_tokens
        if ids is not None and self.max_model_len is not None:
            # Text prompts are clamped by the server itself (to max_model_len - prompt tokens), as here.
            max_tokens = min(max_tokens, self.max_model_len - len(ids))
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": spec.prompt if ids is None else ids,
            "n": spec.n,
            "max_tokens": max_tokens,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "stop": list(spec.stop),
            "ignore_eos": spec.ignore_eos,
            "return_token_ids": True,
        }
        if ids is None and not self._special(spec.prompt):  # type: ignore[arg-type]
            body["add_special_tokens"] = False
        if spec.seed is not None:
            body["seed"] = spec.seed
        if spec.logprobs:
            body["logprobs"] = 0
        return body

    async def _split_cap(self, spec: SamplingSpec) -> tuple[SamplingSpec, int | None]:
        """A live-metered call (``token_cap``) on a remote server, which cannot end one sequence of a call
        without the others: the cap less the prompt's exact tokens, split evenly among the sequences. Returns
        the spec to send and the per-sequence length the cap allows (None when it did not cut)."""
        if spec.token_cap is None:
            return spec, None
        prompt = len(spec.prompt) if not isinstance(spec.prompt, str) else len(await self.tokenize(spec.prompt))
        each = (spec.token_cap - prompt) // spec.n
        if each < 1:
            raise BudgetExceeded(f"{self.name}: the prompt is {prompt} tokens; the call's cap of {spec.token_cap} leaves no token for n={spec.n}")
        sent = replace(spec, token_cap=None, max_tokens=min(spec.max_tokens, each))
        return sent, (each if each < spec.max_tokens else None)

    async def generate(self, spec: SamplingSpec) -> Generation:
        rid = spec.request_id or uuid.uuid4().hex
        spec, each = await self._split_cap(spec)
        data = await self._post_call("/v1/completions", self._body(spec), rid)
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
        cut = sum(1 for c in completions if each is not None and c.finish_reason == "length" and c.tokens >= each)
        return Generation(completions=tuple(completions), usage=_usage(data.get("usage") or {}), worker=self.name, budget_cut=cut)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        spec, each = await self._split_cap(spec)
        body = self._body(spec) | {"stream": True}
        counts: dict[int, int] = {}
        try:
            async with self._client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    try:
                        _checked(resp, self.name)
                    except InvalidRequest as err:
                        raise self._named(err) from None
                async for line in resp.aiter_lines():
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    for c in chunk.get("choices", ()):
                        i = c["index"]
                        counts[i] = counts.get(i, 0) + len(c.get("token_ids") or ())
                        finish = c.get("finish_reason")
                        cut = each is not None and finish == "length" and counts[i] >= each
                        yield StreamDelta(index=i, text=c.get("text", ""), tokens=counts[i], finish_reason=finish, cut=cut)
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
            "prompt_logprobs": self._top_k if spec.candidates else 0,  # only what the score reads
            "return_token_ids": True,
        }
        if isinstance(spec.prompt, str) and not self._special(spec.prompt):
            body["add_special_tokens"] = False
        rid = spec.request_id or uuid.uuid4().hex
        data = await self._post_call("/v1/completions", body, rid)
        choice = data["choices"][0]
        ids = list(choice.get("prompt_token_ids") or ())
        rows = (choice.get("prompt_logprobs") or [])[1:]
        if len(ids) < 2 or not 0 <= spec.start < len(ids) - 1:
            raise InvalidRequest(f"{self.name}: score start {spec.start} outside the {len(ids)}-token prompt")
        picked = [{int(k): v["logprob"] for k, v in row.items()} for row in rows[spec.start :]]
        logprobs = tuple(row[ids[spec.start + i + 1]] for i, row in enumerate(picked))
        candidates = tuple(tuple(row.get(t, -math.inf) for t in spec.candidates) for row in picked) if spec.candidates else ()
        return Scores(tuple(ids), spec.start, logprobs, candidates, _usage(data.get("usage") or {}), worker=self.name)

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        """vLLM's ``POST /pooling`` with task ``token_classify``, on token ids (tokenised here first when text:
        the response carries no ids, and the caller needs them to place its rows)."""
        ids = list(spec.prompt) if not isinstance(spec.prompt, str) else await self.tokenize(spec.prompt)
        self._fits(len(ids), room=0)
        body = {"model": self.model, "input": ids, "task": "token_classify"}
        rid = spec.request_id or uuid.uuid4().hex
        data = await self._post_call("/pooling", body, rid)
        return token_classes(data, ids, worker=self.name)

    async def tokenize(self, text: str) -> list[int]:
        body = {"model": self.model, "prompt": text, "add_special_tokens": self._special(text)}
        return list((await self._post("/tokenize", body))["tokens"])

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        # The server owns the chat template: have it render to ids, then back to text.
        try:
            ids = (await self._post("/tokenize", {"model": self.model, "messages": list(messages), "add_generation_prompt": True}))["tokens"]
        except InvalidRequest as err:
            # vLLM refuses messages for a tokenizer without a template with a 400 that says so.
            if "chat template" in err.message.lower() or "chat_template" in err.message.lower():
                raise NoChatTemplate(f"{self.model} at {self._client.base_url} has no chat template ({err.message[-200:]})") from None
            raise
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

    @property
    def start_one_by_one(self) -> bool:
        return False  # nothing loads here: the server is already up

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> RemoteEngine:
        # No actor here: nothing to name cluster-wide or to restart; the server's lifetime is its own.
        return RemoteEngine(self.url, model=self.model, name=name, api_key=self.api_key, role=self.role)


def token_classes(data: dict[str, Any], ids: Sequence[int], *, worker: str) -> TokenClasses:
    """A ``/pooling`` response (vLLM's ``PoolingResponse``) for one token-id input as :class:`TokenClasses`."""
    items = data.get("data") or []
    if len(items) != 1:
        raise EngineError(f"/pooling returned {len(items)} results for one input", worker=worker)
    raw = items[0].get("data")
    if not isinstance(raw, list) or (raw and not isinstance(raw[0], list)):
        raise EngineError("/pooling returned no per-token rows: is the model served with `--runner pooling`?", worker=worker)
    rows = tuple(tuple(float(p) for p in row) for row in raw)
    u = _usage(data.get("usage") or {})
    return TokenClasses(tuple(ids), rows, Usage(prompt_tokens=u.prompt_tokens or len(ids)), worker=worker)


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
