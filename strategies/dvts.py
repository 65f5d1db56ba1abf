"""Diverse verifier tree search (DVTS, search-and-learn's baseline beside beam search): ``n // beam_width``
independent subtrees, each a greedy search of width ``beam_width``.

Every iteration each open subtree samples ``beam_width`` next steps of its one current node (siblings share the
prefill), the PRM scores them, and the subtree moves to its best child; a subtree ends when that child is
finished (the model ended its trace, or ``max_tokens`` used), and every finished child of that last expansion
is one of its finals (search-and-learn returns all ``beam_width`` finals of each subtree, so at n 8 the answer
is chosen among up to 8 candidates, not 2). The last iteration is the final roll-out: its expansions run on to
the end of their traces. Subtrees never compete with each other, which is what keeps them diverse where beam
search's global pruning collapses onto one prefix. Each iteration expands at most ``n`` steps, as beam
search's does, so the two compare at equal width. The answer is chosen among the subtrees' finals (argmax or
weighted vote of their aggregated scores).
"""

from __future__ import annotations

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies import beam_search
from strategies.common import Path, extend, score_paths, search_result


class Params(beam_search.Params):
    n: int = Field(8, ge=1, le=256, description="Steps expanded per iteration over all subtrees.")
    beam_width: int = Field(4, ge=1, le=64, description="Children each subtree samples per step; n // beam_width subtrees.")


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    cfg = params.step_config(ctx.tools.profile)
    current: list[Path] = [Path()] * (params.n // params.beam_width)  # one node per open subtree
    finished: list[Path] = []
    trace: list[dict[str, object]] = []
    limited = False
    for step in range(params.max_steps):
        last = step == params.max_steps - 1
        children, limited = await extend(ctx, problem, [(node, params.beam_width) for node in current], cfg, hop=2 * step, to_end=last)
        flat = [k for ks in children for k in ks]
        if not flat:
            break
        try:
            scored = await score_paths(ctx, problem, flat, params.aggregation, hop=2 * step + 1)
        except BudgetExceeded:
            scored, limited = flat, True
        it = iter(scored)
        groups = [[next(it) for _ in ks] for ks in children if ks]
        best = [max(g, key=lambda k: k.score) for g in groups]
        finished += [k for g, b in zip(groups, best) if b.done for k in g if k.done]
        current = [b for b in best if not b.done]
        trace.append({"step": step, "subtrees": len(best), "finished": len(finished), "scores": [round(b.score, 4) for b in best]})
        ctx.emit({"stage": "step", "step": step, "open": len(current), "finished": len(finished)})
        if limited or not current:
            break
    return search_result(ctx, finished, current, params.selection, trace, limited=limited)


SPEC = StrategySpec(
    name="dvts",
    params=Params,
    run=run,
    summary="Diverse verifier tree search: n/beam_width independent greedy subtrees, each sampling beam_width steps",
    # Every iteration generates at most n steps, the final roll-out n whole paths.
    worst_case=lambda p: p.n * (p.step_tokens * min(p.max_steps, p.max_tokens) + p.max_tokens),
    needs=lambda p: frozenset({"prm"}),
)
