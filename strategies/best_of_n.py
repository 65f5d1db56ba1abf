"""Best-of-N: sample n solutions, score each with the PRM or the outcome judge, keep the best.

``selection`` is ``argmax`` (the single highest score) or ``weighted`` (the answer whose solutions' scores
sum highest, the weighted majority vote of search-and-learn). With the PRM, a solution's score aggregates
its step scores (``last``, ``min``, ``prod`` or ``mean``). Samples are scored concurrently, after all are
drawn; when the budget has no room left for scoring, the plain majority of the samples is returned.

``adaptive=true`` draws the n samples in waves and stops once their plain vote is settled
(:func:`strategies.adaptive_consistency.sample_in_waves`: ``wave``, ``min_samples``, ``confidence``); the
samples drawn are then scored as above. The rule reads answers, not scores: scoring each wave before the
next would add a PRM round trip per wave for the same tokens.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.scoring import Aggregation, aggregate
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies.adaptive_consistency import AdaptiveOption, sample_in_waves
from strategies.common import best_scored, candidates, majority, result


class Params(AdaptiveOption):
    scorer: Literal["prm", "judge"] = Field("prm", description="Who scores: the process reward model or the outcome judge.")
    aggregation: Aggregation = Field("last", description="How the PRM's step scores become one (ignored by the judge).")
    selection: Literal["argmax", "weighted"] = Field("weighted", description="Highest score, or weighted majority vote.")


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    info: dict[str, object] = {}
    trace: list[dict[str, object]] = []
    hop = 1  # scoring waits for the samples: one hop after the last wave
    if params.adaptive:
        waves = await sample_in_waves(problem, ctx, params, n=params.n, wave=params.wave, min_samples=params.min_samples, confidence=params.confidence)
        cands, trace, hop = waves.candidates, waves.trace, len(waves.trace)
        info = {"samples": len(cands), "waves": len(trace), "stopped": waves.stopped}
    else:
        gen = await ctx.generate(params.sampling(problem.prompt, n=params.n), stage="sample")
        cands = candidates(ctx, gen.completions)
    texts = [c.text for c in cands]
    try:
        if params.scorer == "prm":
            steps = await ctx.prm(problem.text, texts, stage="score", hop=hop)
            scores = [aggregate(s, params.aggregation) for s in steps]
        else:
            scores = await ctx.judge(problem.text, texts, stage="score", hop=hop)
    except BudgetExceeded:
        return result(majority(cands), cands, finish_reason="budget", info={**info, "scored": False}, trace=trace)
    cands = [replace(c, score=s) for c, s in zip(cands, scores)]
    chosen = best_scored(cands, params.selection)
    ctx.emit({"stage": "select", "answer": chosen.answer, "score": chosen.score})
    finish = {"finish_reason": "budget"} if info.get("stopped") == "budget" else {}
    return result(chosen, cands, info={**info, "scored": True, "selection": params.selection}, trace=trace, **finish)


SPEC = StrategySpec(
    name="best_of_n",
    params=Params,
    run=run,
    summary="n samples scored by the PRM or the judge; best (argmax) or weighted majority",
    worst_case=lambda p: p.n * p.max_tokens,
    needs=lambda p: frozenset({p.scorer}),
)
