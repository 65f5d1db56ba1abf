"""Early rejection with partial rewards (ER-PRM): PRM beam search that judges a step before it is finished.

Every iteration samples ``n`` candidate next steps (each survivor ``beam_width`` times, the root ``n``
times), but only their first ``tau`` tokens. The PRM scores these partial steps; the best
``n // beam_width`` are kept and only those are completed (up to ``step_tokens`` in all). The others are
rejected after ``tau`` tokens, which is where the saving over :mod:`strategies.beam_search` comes from: most
candidates never cost a whole step, and the completed steps are not scored again (a beam's score is its
partial reward, as in the paper). The answer is chosen among finished beams as in beam search.
"""

from __future__ import annotations

from dataclasses import replace
from pydantic import Field, model_validator

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies import beam_search
from strategies.common import Path, extend, grow, refill, search_result


class Params(beam_search.Params):
    tau: int = Field(4, ge=1, le=1024, description="Tokens of a candidate step generated before the PRM judges it.")

    @model_validator(mode="after")
    def _tau_below_a_step(self) -> Params:
        if self.tau >= self.step_tokens:
            raise ValueError(f"tau={self.tau} must be below step_tokens={self.step_tokens}, or nothing is rejected early")
        return self


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    partial = params.step_config(ctx.tools.profile, params.tau)
    rest = replace(partial, step_tokens=params.step_tokens - params.tau, seed=None if params.seed is None else params.seed + 1)
    keep = params.n // params.beam_width
    survivors: list[Path] = [Path()]
    finished: list[Path] = []
    trace: list[dict[str, object]] = []
    limited = False
    for step in range(params.max_steps):
        kids, limited = await grow(ctx, problem, refill(survivors, params.n), partial, params.aggregation, hop=3 * step, stage="partial")
        if not kids:
            break
        kept = sorted(kids, key=lambda k: -k.score)[:keep]
        # A kept candidate whose partial step already ended (a short step) needs no completion.
        cut = [k for k in kept if not k.done and k.finish_reason == "length"]
        completed, more = await extend(ctx, problem, [(k, 1) for k in cut], rest, hop=3 * step + 2, stage="complete")
        limited = limited or more
        whole = {id(k): (c[0] if c else k) for k, c in zip(cut, completed)}
        kept = [replace(whole.get(id(k), k), steps=k.steps, score=k.score) for k in kept]
        finished += [k for k in kept if k.done]
        survivors = [k for k in kept if not k.done]
        trace.append(
            {
                "step": step,
                "sampled": len(kids),
                "rejected_at_tau": len(kids) - len(kept),
                "completed": len(cut),
                "kept": len(kept),
                "scores": [round(k.score, 4) for k in kids],
            }
        )
        ctx.emit({"stage": "step", "step": step, "kept": len(kept), "finished": len(finished)})
        if limited or len(finished) >= keep or not survivors:
            break
    return search_result(ctx, finished, survivors, params.selection, trace, limited=limited)


SPEC = StrategySpec(
    name="early_rejection",
    params=Params,
    run=run,
    summary="ER-PRM: beam search whose candidate steps are judged by the PRM after tau tokens; only the kept are completed",
    # Per iteration: n partial steps of tau tokens, n // beam_width completions; at most min(max_steps, max_tokens) iterations.
    worst_case=lambda p: (p.n * p.tau + (p.n // p.beam_width) * p.step_tokens) * min(p.max_steps, p.max_tokens),
    needs=lambda p: frozenset({"prm"}),
)
