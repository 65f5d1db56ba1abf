"""Single pass: one sample, its answer as is. The baseline every strategy's cost is measured from."""

from __future__ import annotations

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies.common import candidates, result
from strategies.params import MaxTokens, Sampling, Temperature


class Params(Sampling):
    temperature: Temperature = Field(0.0, description="Sampling temperature; 0 is greedy.")
    max_tokens: MaxTokens = Field(256, description="Most new tokens.")


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    gen = await ctx.generate(params.sampling(problem.prompt), stage="sample")
    cands = candidates(ctx, gen.completions)
    return result(cands[0], cands)


SPEC = StrategySpec(
    name="single_pass",
    params=Params,
    run=run,
    summary="one sample (greedy by default)",
    worst_case=lambda p: p.max_tokens,
)
