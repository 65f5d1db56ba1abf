"""The controller: validates a reasoning request, records it, runs its strategy, records every sub-call.

A request is recorded only once it has been validated, so bad input leaves no row at all; a recorded
request always ends ``succeeded``, ``failed``, ``cancelled`` or ``budget_exhausted``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from pydantic import BaseModel, ValidationError

from orchestrator.budget import Budget, BudgetMeter, Price
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
    budget: Budget | None = None  # every limit; ``max_total_tokens`` is the same as budget.total_tokens


@dataclass(frozen=True)
class ReasoningResponse:
    request_id: str
    model: str
    strategy: str
    result: StrategyResult
    usage: Usage
    subcalls: int
    latency_s: float
    verifier_tokens: int = 0
    cost_usd: float = 0.0


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
        prices: Mapping[str, Price] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.strategies = strategies
        self.verifier = verifier
        self.models = models
        self.max_request_tokens = max_request_tokens
        self.prices: dict[str, Price] = dict(prices or {})  # by role

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
        role = self.models[req.model]
        if req.budget is not None and req.budget.cost_usd is not None and role not in self.prices:
            raise InvalidRequest(f"budget.cost_usd needs a price for model {req.model!r}; none is configured", param="budget.cost_usd")
        return spec, params, role

    def budget_for(self, req: ReasoningRequest) -> Budget:
        """The request's limits, its token limit capped by the server's ceiling."""
        given = req.budget or Budget()
        totals = [t for t in (given.total_tokens, req.max_total_tokens, self.max_request_tokens) if t is not None]
        return Budget(min(totals), given.sequential_tokens, given.cost_usd, given.deadline_s)

    async def reason(self, req: ReasoningRequest) -> ReasoningResponse:
        spec, params, role = self.validate(req)
        prompt = await self.engine.render_chat(role, req.messages)
        budget = self.budget_for(req)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        await self.store.acreate_request(
            request_id=request_id, model=req.model, strategy=spec.name, params=params.model_dump(), prompt=prompt
        )
        calls = 0

        async def sink(call: SubCall) -> None:
            nonlocal calls
            calls += 1
            await self.store.aadd_subcall(request_id, call)

        meter = BudgetMeter(budget, prices=self.prices)
        ctx = StrategyContext(engine=self.engine, verifier=self.verifier, sink=sink, policy_role=role, meter=meter)
        start = time.perf_counter()
        try:
            result = await spec.run(Problem(prompt=prompt), ctx, params)
        except asyncio.CancelledError:
            await asyncio.shield(self.store.afinish_request(request_id, state="cancelled", usage=ctx.usage, error="cancelled by the caller"))
            raise
        except BudgetExceeded as err:
            # The strategy let the refusal through: it had nothing better, so the answer is empty.
            result = StrategyResult(text="", answer=None, finish_reason="budget", info={"budget": err.message})
        except TTSError as err:
            await self.store.afinish_request(request_id, state="failed", usage=ctx.usage, error=f"{type(err).__name__}: {err.message}")
            raise
        except Exception as err:
            log.exception("request %s failed", request_id)
            await self.store.afinish_request(request_id, state="failed", usage=ctx.usage, error=f"{type(err).__name__}: {err}")
            raise
        if ctx.budget_limited and result.finish_reason != "budget":
            result = replace(result, finish_reason="budget")  # the budget shaped this answer: say so
        state = "budget_exhausted" if result.finish_reason == "budget" else "succeeded"
        await self.store.afinish_request(
            request_id, state=state, usage=ctx.usage, result=result, verifier_tokens=ctx.verifier_tokens, cost_usd=ctx.cost_usd, budget=budget.as_dict()
        )
        return ReasoningResponse(
            request_id=request_id,
            model=req.model,
            strategy=spec.name,
            result=result,
            usage=ctx.usage,
            subcalls=calls,
            latency_s=time.perf_counter() - start,
            verifier_tokens=ctx.verifier_tokens,
            cost_usd=ctx.cost_usd,
        )


def summarize(strategies: Sequence[StrategySpec]) -> dict[str, StrategySpec]:
    """Index strategy specs by name, refusing duplicates (a registry typo must fail at start-up)."""
    out: dict[str, StrategySpec] = {}
    for s in strategies:
        if s.name in out:
            raise ValueError(f"strategy {s.name!r} registered twice")
        out[s.name] = s
    return out
