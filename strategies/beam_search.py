"""PRM beam search (search-and-learn style): n beams grow one step at a time; the PRM prunes them.

Every iteration expands exactly ``n`` beams by one step (up to the model profile's step delimiter): the
``n // beam_width`` survivors of the last pruning, each ``beam_width`` times (before the first pruning, the
root n times). Beams that finish (the model ended its trace, or ``max_tokens`` used) leave the beam and are kept as results; the open ones are
scored by the PRM and the best ``n // beam_width`` survive. The search stops when ``n`` beams have finished,
when nothing is open, or after ``max_steps`` iterations; the last iteration is search-and-learn's final
roll-out: its expansions run on to the end of their traces, so the beams still open then finish with an
answer instead of being returned without one (a real model's trace has far more steps than any depth a
search can afford). The answer is chosen among the finished beams (argmax or weighted vote of their aggregated
scores); open beams only when nothing finished.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies.common import Path, StepSearchParams, grow, refill, search_result


class Params(StepSearchParams):
    n: int = Field(8, ge=1, le=256, description="Beams expanded at every iteration.")
    beam_width: int = Field(4, ge=1, le=64, description="Children per surviving beam; n // beam_width survive a pruning.")
    max_steps: int = Field(
        40, ge=1, le=1024, description="Step iterations; the last one rolls every open beam out to the end (default: the profile's `scale.max_steps`)."
    )

    PROFILE_DEFAULTS = {**StepSearchParams.PROFILE_DEFAULTS, "max_steps": lambda p: p.scale.max_steps}

    @model_validator(mode="after")
    def _divisible(self) -> Params:
        if self.n % self.beam_width:
            raise ValueError(f"n={self.n} must be a multiple of beam_width={self.beam_width}")
        return self


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    cfg = params.step_config(ctx.tools.profile)
    keep = params.n // params.beam_width
    survivors: list[Path] = [Path()]
    finished: list[Path] = []
    trace: list[dict[str, object]] = []
    limited = False
    for step in range(params.max_steps):
        parents = refill(survivors, params.n)
        last = step == params.max_steps - 1
        kids, limited = await grow(ctx, problem, parents, cfg, params.aggregation, hop=2 * step, to_end=last)
        if not kids:
            break
        finished += [k for k in kids if k.done]
        survivors = sorted((k for k in kids if not k.done), key=lambda k: -k.score)[:keep]
        trace.append(
            {
                "step": step,
                "expanded": sum(n for _, n in parents),
                "finished": sum(k.done for k in kids),
                "kept": len(survivors),
                "scores": [round(k.score, 4) for k in kids],
            }
        )
        ctx.emit({"stage": "step", "step": step, "kept": len(survivors), "finished": len(finished)})
        if limited or len(finished) >= params.n or not survivors:
            break
    return search_result(ctx, finished, survivors, params.selection, trace, limited=limited)


SPEC = StrategySpec(
    name="beam_search",
    params=Params,
    run=run,
    summary="PRM beam search: n beams, keep n/beam_width at every step, expand each beam_width times",
    # Every iteration generates at most n steps, the final roll-out n whole paths.
    worst_case=lambda p: p.n * (p.step_tokens * min(p.max_steps, p.max_tokens) + p.max_tokens),
    needs=lambda p: frozenset({"prm"}),
)
