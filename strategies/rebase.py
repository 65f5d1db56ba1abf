"""REBASE: reward-balanced tree search. The PRM's scores decide how many children each open node gets.

The root is expanded into ``width`` children. At every depth, finished children (an answer, an ended trace,
or ``max_tokens`` used) each take one unit of the width for good; the remaining width is shared among the
open nodes of the depth by a softmax of their PRM scores at temperature ``softmax_temperature``
(:func:`allocate`), and each open node is expanded into its share of children. The search ends when no width
is left, nothing is open, or at ``max_depth``. The answer is the weighted majority of the finished leaves,
each weighted by its aggregated PRM score.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.protocols import StrategySpec
from orchestrator.scoring import Aggregation
from orchestrator.types import Problem, StrategyResult
from strategies.common import Path, StepConfig, best_scored, extend, path_candidates, result, score_paths


def allocate(scores: Sequence[float], width: int, temperature: float) -> list[int]:
    """Children per node: ``width`` shared by softmax(score / temperature), in the input order.

    Nodes are served best first; each takes ``ceil(left * w_i / sum of the weights not yet served)``, so the
    shares always sum to exactly ``width`` and the best node never gets less than its softmax share."""
    if width <= 0 or not scores:
        return [0] * len(scores)
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]  # shifted: exp never overflows
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = [0] * len(scores)
    left, pool = width, sum(weights)
    for i in order:
        if left <= 0:
            break
        share = left if pool <= 0 else min(left, math.ceil(left * weights[i] / pool - 1e-9))
        out[i] = share
        left -= share
        pool -= weights[i]
    return out


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(8, ge=1, le=256, description="Leaves the search may finish (the root's children).")
    softmax_temperature: float = Field(0.2, gt=0.0, le=10.0, description="Temperature of the score softmax (the paper's 0.2).")
    max_depth: int = Field(40, ge=1, le=200, description="Most steps from the root.")
    step_tokens: int = Field(64, ge=1, le=1024, description="Most tokens of one step.")
    max_tokens: int = Field(256, ge=1, le=4096, description="Most generated tokens per path.")
    aggregation: Aggregation = Field("last", description="How a path's step scores become its score.")
    selection: Literal["argmax", "weighted"] = Field("weighted", description="How the answer is chosen among finished leaves.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature (the paper's 1.0).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, description="Engine seed; None for fresh randomness.")


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    cfg = StepConfig(params.step_tokens, params.max_tokens, params.temperature, params.top_p, params.seed)
    remaining = params.width
    frontier: list[Path] = [Path()]
    shares = [params.width]
    finished: list[Path] = []
    trace: list[dict[str, object]] = []
    limited = False
    for depth in range(params.max_depth):
        children, limited = await extend(ctx, problem, list(zip(frontier, shares)), cfg, hop=2 * depth)
        kids = [k for ks in children for k in ks]
        if not kids:
            break
        try:
            kids = await score_paths(ctx, problem, kids, params.aggregation, hop=2 * depth + 1)
        except BudgetExceeded:
            limited = True
            finished += [k for k in kids if k.done]
            frontier = [k for k in kids if not k.done]
            break
        done = [k for k in kids if k.done]
        finished += done
        remaining -= len(done)
        frontier = [k for k in kids if not k.done]
        shares = allocate([k.score for k in frontier], remaining, params.softmax_temperature)
        trace.append(
            {
                "depth": depth,
                "expanded": len(kids),
                "finished": len(done),
                "remaining": remaining,
                "scores": [round(k.score, 4) for k in frontier],
                "allocation": shares,
            }
        )
        ctx.emit({"stage": "depth", "depth": depth, "open": len(frontier), "remaining": remaining})
        if limited or remaining <= 0 or not frontier:
            break
    pool = finished or sorted(frontier, key=lambda k: -k.score)
    cands = path_candidates(ctx, pool)
    if not cands:
        raise BudgetExceeded("the budget had no room for a single step")
    chosen = best_scored(cands, params.selection)
    info = {"finished": len(finished), "depth": len(trace)}
    return result(chosen, cands, trace=trace, info=info, **({"finish_reason": "budget"} if limited else {}))


SPEC = StrategySpec(
    name="rebase",
    params=Params,
    run=run,
    summary="REBASE: the width left is shared among open nodes by a softmax of their PRM scores",
    # At most `width` children per depth (shares sum to the width left), at most min(max_depth, max_tokens) depths.
    worst_case=lambda p: p.width * p.step_tokens * min(p.max_depth, p.max_tokens),  # type: ignore[attr-defined]
    needs=lambda p: frozenset({"prm"}),
)
