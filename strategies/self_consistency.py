"""Self-consistency: sample n solutions, return one whose answer won the majority vote.

Ties go to the answer reached first in sample order; unparsable answers do not vote. When no sample has
an answer, the first sample is returned with answer None.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.context import StrategyContext
from orchestrator.protocols import StrategySpec
from orchestrator.types import Problem, SamplingSpec, StrategyResult
from strategies.common import candidates, majority, result


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, ge=1, le=256, description="Samples to draw.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=4096, description="Most new tokens per sample.")
    seed: int | None = Field(None, description="Engine seed; None for fresh randomness.")


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    spec = SamplingSpec(
        prompt=problem.prompt,
        n=params.n,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
    )
    gen = await ctx.generate(spec, stage="sample")
    cands = candidates(ctx, gen.completions)
    votes = Counter(c.answer for c in cands if c.answer is not None)
    ctx.emit({"stage": "vote", "votes": dict(votes)})
    return result(majority(cands), cands, info={"votes": dict(votes)})


SPEC = StrategySpec(
    name="self_consistency",
    params=Params,
    run=run,
    summary="majority vote over n samples",
    worst_case=lambda p: p.n * p.max_tokens,  # type: ignore[attr-defined]
)
