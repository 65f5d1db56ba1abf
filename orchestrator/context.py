"""The strategy context: a strategy's only door to compute, and where every sub-call is accounted."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Awaitable, Callable, Sequence, TypeVar

from dataclasses import replace

from orchestrator.budget import Budget, BudgetMeter, Reservation
from orchestrator.protocols import AnswerVerifier, Engine
from orchestrator.types import Generation, Role, SamplingSpec, Scores, ScoreSpec, SubCall, Usage

log = logging.getLogger(__name__)

SubCallSink = Callable[[SubCall], Awaitable[None]]
T = TypeVar("T")


class StrategyContext:
    """Given to a strategy for one request.

    Every ``generate`` and ``score`` is admitted by the request's :class:`BudgetMeter` before it starts (which
    may cut its ``max_tokens`` to what is left, or refuse it with ``BudgetExceeded``), recorded through
    ``sink`` after it ends, and charged. ``usage`` is what the policy roles cost (OpenAI's usage);
    ``verifier_tokens`` what scoring cost. Both count against the budget."""

    def __init__(
        self,
        *,
        engine: Engine,
        verifier: AnswerVerifier,
        sink: SubCallSink,
        policy_role: Role = "policy",
        meter: BudgetMeter | None = None,
    ) -> None:
        self._engine = engine
        self._verifier = verifier
        self._sink = sink
        self._seq = itertools.count()
        self.policy_role: Role = policy_role
        self.meter = meter or BudgetMeter(Budget())
        self.usage = Usage()
        self.verifier_tokens = 0
        self.cost_usd = 0.0
        self.events: list[dict[str, object]] = []

    @property
    def budget_limited(self) -> bool:
        """Whether some call was cut or refused by the budget (the answer is then reported as ``budget``)."""
        return self.meter.limited

    async def generate(self, spec: SamplingSpec, *, stage: str, branch: str = "0", role: Role | None = None) -> Generation:
        """Run ``spec`` on ``role`` (default: the policy). Its ``max_tokens`` may come back cut by the budget:
        compare with ``Completion.finish_reason == "length"`` or check ``budget_limited``."""
        role = role or self.policy_role
        r = self.meter.admit(role=role, prompt_bound=prompt_bound(spec.prompt), n=spec.n, max_tokens=spec.max_tokens)
        spec = replace(spec, max_tokens=r.max_tokens) if r.truncated else spec
        gen, latency = await self._metered(r, self._engine.generate(role, spec))
        longest = max((c.tokens for c in gen.completions), default=0)
        cost = self.meter.settle(r, role=role, usage=gen.usage, longest_sequence=longest)
        self.usage = self.usage + gen.usage
        self.cost_usd += cost
        await self._record(stage, role, branch, spec.n, gen.usage, gen.worker, tuple(c.finish_reason for c in gen.completions), cost, latency)
        return gen

    async def score(self, spec: ScoreSpec, *, stage: str, branch: str = "0", role: Role = "prm") -> Scores:
        """Prompt log-probabilities from ``role`` (a PRM, a judge); charged as verifier tokens."""
        r = self.meter.admit(role=role, prompt_bound=prompt_bound(spec.prompt), n=1, max_tokens=1, generates=False)
        scores, latency = await self._metered(r, self._engine.score(role, spec))
        cost = self.meter.settle(r, role=role, usage=scores.usage, longest_sequence=0)
        self.verifier_tokens += scores.usage.total_tokens
        self.cost_usd += cost
        await self._record(stage, role, branch, 1, scores.usage, scores.worker, ("stop",), cost, latency, verifier=True)
        return scores

    async def abort(self, request_ids: Sequence[str]) -> None:
        """Stop running calls by their specs' ``request_id``. Each aborted ``generate`` still returns, with
        finish reason ``abort`` and the tokens it had generated, so the ledger keeps what they cost."""
        if request_ids:
            await self._engine.abort(list(request_ids))

    async def _metered(self, r: Reservation, call: Awaitable[T]) -> tuple[T, float]:
        start = time.perf_counter()
        try:
            out = await call
        except BaseException:
            self.meter.release(r)  # nothing was reported for it: the engine aborted or refused the call
            raise
        return out, time.perf_counter() - start

    async def _record(self, stage, role, branch, n, usage, worker, finish_reasons, cost, latency, *, verifier=False) -> None:  # noqa: ANN001
        call = SubCall(
            seq=next(self._seq),
            stage=stage,
            role=role,
            branch=branch,
            n=n,
            usage=usage,
            latency_s=latency,
            worker=worker,
            finish_reasons=finish_reasons,
            cost_usd=cost,
            kind="score" if verifier else "generate",
        )
        await self._sink(call)

    def extract(self, text: str) -> str | None:
        """The canonical answer of ``text`` (None when it has none); equal keys are equivalent answers."""
        return self._verifier.extract(text)

    def emit(self, event: dict[str, object]) -> None:
        """Report progress (kept with the request; streamed to callers once streaming exists)."""
        self.events.append(event)
        log.debug("strategy event %s", event)


def prompt_bound(prompt: str | tuple[int, ...]) -> int:
    """An upper bound on a prompt's tokens (see orchestrator.budget)."""
    return len(prompt) if not isinstance(prompt, str) else len(prompt.encode()) + 2
