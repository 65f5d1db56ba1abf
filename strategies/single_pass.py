"""Single pass: one sample, its answer as is. The baseline every strategy's cost is measured from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.context import StrategyContext
from orchestrator.protocols import StrategySpec
from orchestrator.types import Problem, SamplingSpec, StrategyResult
from strategies.common import candidates, result


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=4096, description="Most new tokens.")
    seed: int | None = Field(None, description="Engine seed; None for fresh randomness.")


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    spec = SamplingSpec(prompt=problem.prompt, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p, seed=params.seed)
    gen = await ctx.generate(spec, stage="sample")
    cands = candidates(ctx, gen.completions)
    return result(cands[0], cands)


SPEC = StrategySpec(
    name="single_pass",
    params=Params,
    run=run,
    summary="one sample (greedy by default)",
    worst_case=lambda p: p.max_tokens,  # type: ignore[attr-defined]
)
