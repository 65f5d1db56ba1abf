"""Single pass: one sample, its answer as is. The baseline every strategy's cost is measured from."""

from __future__ import annotations

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.profile import ModelProfile
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies.common import candidates, result
from strategies.params import MaxTokens, Sampling, Temperature


def _temperature(p: ModelProfile) -> float | None:
    # Greedy unless the model's card says greedy decoding fails it (R1-Distill repeats until the length limit).
    if p.sampling.greedy_single_pass:
        return None
    return p.sampling.temperature if p.sampling.temperature is not None else Sampling.model_fields["temperature"].default


class Params(Sampling):
    temperature: Temperature = Field(0.0, description="Sampling temperature; 0 is greedy (the default unless the model profile says otherwise).")
    max_tokens: MaxTokens = Field(256, description="Most new tokens.")

    PROFILE_DEFAULTS = {**Sampling.PROFILE_DEFAULTS, "temperature": _temperature}


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
