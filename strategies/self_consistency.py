"""Self-consistency: sample n solutions, return one whose answer won the majority vote.

Ties go to the answer reached first in sample order; unparsable answers do not vote. When no sample has
an answer, the first sample is returned with answer None.

``adaptive=true`` draws the n samples in waves and stops once the vote is settled
(:mod:`strategies.adaptive_consistency`, with its ``wave``, ``min_samples`` and ``confidence``).
"""

from __future__ import annotations

from collections import Counter

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies.adaptive_consistency import AdaptiveOption, vote
from strategies.common import candidates, majority, result


class Params(AdaptiveOption):
    """n samples (in waves with ``adaptive``), then the vote."""


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    if params.adaptive:
        return await vote(problem, ctx, params, n=params.n, wave=params.wave, min_samples=params.min_samples, confidence=params.confidence)
    gen = await ctx.generate(params.sampling(problem.prompt, n=params.n), stage="sample")
    cands = candidates(ctx, gen.completions)
    votes = Counter(c.answer for c in cands if c.answer is not None)
    ctx.emit({"stage": "vote", "votes": dict(votes)})
    return result(majority(cands), cands, info={"votes": dict(votes)})


SPEC = StrategySpec(
    name="self_consistency",
    params=Params,
    run=run,
    summary="majority vote over n samples",
    worst_case=lambda p: p.n * p.max_tokens,
)
