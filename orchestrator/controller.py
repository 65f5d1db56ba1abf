"""The controller: validates a reasoning request, records it, runs its strategy, records every sub-call.

A request is recorded only once it has been validated, so bad input leaves no row at all; a recorded
request always ends ``succeeded``, ``failed``, ``cancelled`` or ``budget_exhausted``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

from pydantic import BaseModel, ValidationError

from orchestrator.context import StrategyContext
from orchestrator.db.store import Store
from orchestrator.errors import BudgetExceeded, InvalidRequest, TTSError, UnknownModel, UnknownStrategy
from orchestrator.protocols import AnswerVerifier, Engine, StrategySpec
from orchestrator.types import Problem, Role, StrategyResult, SubCall, Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReasoningRequest:
    model: str
    messages: tuple[dict[str, str], ...]
    strategy: str
    params: Mapping[str, object]
    max_total_tokens: int | None = None


@dataclass(frozen=True)
class ReasoningResponse:
    request_id: str
    model: str
    strategy: str
    result: StrategyResult
    usage: Usage
    subcalls: int
    latency_s: float


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"strategy_params.{loc}: {first['msg']}" if loc else first["msg"], loc or None


class Controller:
    """Runs reasoning requests. ``models`` maps the names callers use to the worker role serving them."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: Store,
        strategies: Mapping[str, StrategySpec],
        verifier: AnswerVerifier,
        models: Mapping[str, Role],
        max_request_tokens: int,
    ) -> None:
        self.engine = engine
        self.store = store
        self.strategies = strategies
        self.verifier = verifier
        self.models = models
        self.max_request_tokens = max_request_tokens

    def validate(self, req: ReasoningRequest) -> tuple[StrategySpec, BaseModel, Role]:
        """Check everything that can be checked before any compute is spent; raise InvalidRequest."""
        if req.model not in self.models:
            raise UnknownModel(f"model {req.model!r} is not served; served: {sorted(self.models)}", param="model")
        spec = self.strategies.get(req.strategy)
        if spec is None:
            raise UnknownStrategy(
                f"unknown strategy {req.strategy!r}; available: {sorted(self.strategies)}", param="strategy"
            )
        try:
            params = spec.params.model_validate(dict(req.params))
        except ValidationError as err:
            msg, loc = _validation_message(err)
            raise InvalidRequest(msg, param=f"strategy_params.{loc}" if loc else "strategy_params") from None
        if not req.messages or not any(m.get("content", "").strip() for m in req.messages):
            raise InvalidRequest("messages must contain at least one non-empty message", param="messages")
        if req.max_total_tokens is not None and req.max_total_tokens <= 0:
            raise InvalidRequest("max_total_tokens must be positive", param="max_total_tokens")
        return spec, params, self.models[req.model]

    async def reason(self, req: ReasoningRequest) -> ReasoningResponse:
        spec, params, role = self.validate(req)
        prompt = await self.engine.render_chat(role, req.messages)
        budget = min(req.max_total_tokens or self.max_request_tokens, self.max_request_tokens)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        await self.store.acreate_request(
            request_id=request_id, model=req.model, strategy=spec.name, params=params.model_dump(), prompt=prompt
        )
        calls = 0

        async def sink(call: SubCall) -> None:
            nonlocal calls
            calls += 1
            await self.store.aadd_subcall(request_id, call)

        ctx = StrategyContext(engine=self.engine, verifier=self.verifier, sink=sink, policy_role=role, max_total_tokens=budget)
        start = time.perf_counter()
        try:
            result = await spec.run(Problem(prompt=prompt), ctx, params)
        except asyncio.CancelledError:
            await asyncio.shield(self.store.afinish_request(request_id, state="cancelled", usage=ctx.usage, error="cancelled by the caller"))
            raise
        except BudgetExceeded as err:
            await self.store.afinish_request(request_id, state="budget_exhausted", usage=ctx.usage, error=err.message)
            raise
        except TTSError as err:
            await self.store.afinish_request(request_id, state="failed", usage=ctx.usage, error=f"{type(err).__name__}: {err.message}")
            raise
        except Exception as err:
            log.exception("request %s failed", request_id)
            await self.store.afinish_request(request_id, state="failed", usage=ctx.usage, error=f"{type(err).__name__}: {err}")
            raise
        state = "budget_exhausted" if result.finish_reason == "budget" else "succeeded"
        await self.store.afinish_request(request_id, state=state, usage=ctx.usage, result=result)
        return ReasoningResponse(
            request_id=request_id,
            model=req.model,
            strategy=spec.name,
            result=result,
            usage=ctx.usage,
            subcalls=calls,
            latency_s=time.perf_counter() - start,
        )


def summarize(strategies: Sequence[StrategySpec]) -> dict[str, StrategySpec]:
    """Index strategy specs by name, refusing duplicates (a registry typo must fail at start-up)."""
    out: dict[str, StrategySpec] = {}
    for s in strategies:
        if s.name in out:
            raise ValueError(f"strategy {s.name!r} registered twice")
        out[s.name] = s
    return out
