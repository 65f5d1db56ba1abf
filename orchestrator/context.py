"""The strategy context: a strategy's only door to compute, and where every sub-call is accounted."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Awaitable, Callable

from orchestrator.errors import BudgetExceeded
from orchestrator.protocols import AnswerVerifier, Engine
from orchestrator.types import Generation, Role, SamplingSpec, SubCall, Usage

log = logging.getLogger(__name__)

SubCallSink = Callable[[SubCall], Awaitable[None]]


class StrategyContext:
    """Given to a strategy for one request.

    Every ``generate`` is checked against the token budget before it starts, recorded through ``sink``
    after it ends, and charged to ``usage``. ``max_total_tokens`` bounds prompt + completion tokens over
    all sub-calls; a call is refused when its worst case (prompt not counted) would cross it."""

    def __init__(
        self,
        *,
        engine: Engine,
        verifier: AnswerVerifier,
        sink: SubCallSink,
        policy_role: Role = "policy",
        max_total_tokens: int | None = None,
    ) -> None:
        self._engine = engine
        self._verifier = verifier
        self._sink = sink
        self._seq = itertools.count()
        self.policy_role: Role = policy_role
        self.max_total_tokens = max_total_tokens
        self.usage = Usage()
        self.events: list[dict[str, object]] = []

    async def generate(self, spec: SamplingSpec, *, stage: str, branch: str = "0", role: Role | None = None) -> Generation:
        worst = self.usage.total_tokens + spec.n * spec.max_tokens
        if self.max_total_tokens is not None and worst > self.max_total_tokens:
            raise BudgetExceeded(
                f"call of n={spec.n} x {spec.max_tokens} tokens would exceed the budget of "
                f"{self.max_total_tokens} tokens ({self.usage.total_tokens} spent)"
            )
        role = role or self.policy_role
        start = time.perf_counter()
        gen = await self._engine.generate(role, spec)
        call = SubCall(
            seq=next(self._seq),
            stage=stage,
            role=role,
            branch=branch,
            n=spec.n,
            usage=gen.usage,
            latency_s=time.perf_counter() - start,
            worker=gen.worker,
            finish_reasons=tuple(c.finish_reason for c in gen.completions),
        )
        self.usage = self.usage + gen.usage
        await self._sink(call)
        return gen

    def extract(self, text: str) -> str | None:
        """The canonical answer of ``text`` (None when it has none); equal keys are equivalent answers."""
        return self._verifier.extract(text)

    def emit(self, event: dict[str, object]) -> None:
        """Report progress (kept with the request; streamed to callers once streaming exists)."""
        self.events.append(event)
        log.debug("strategy event %s", event)
