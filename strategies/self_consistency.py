"""Self-consistency: sample n solutions, return one whose answer won the majority vote.

Ties go to the answer reached first in sample order; unparsable answers do not vote. When no sample has
an answer, the first sample is returned with answer None.
"""

from __future__ import annotations

from collections import Counter

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies.common import candidates, majority, result
from strategies.params import Sampling


class Params(Sampling):
    n: int = Field(8, ge=1, le=256, description="Samples to draw.")


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
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
