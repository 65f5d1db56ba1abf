"""REBASE: reward-balanced tree search. The PRM's scores decide how many children each open node gets.

The root is expanded into ``width`` children. At every depth, finished children (the model ended its trace,
or ``max_tokens`` used) each take one unit of the width for good; the remaining width is shared among the
open nodes of the depth by a softmax of their PRM scores at temperature ``softmax_temperature``
(:func:`allocate`), and each open node is expanded into its share of children. The search ends when no width
is left, nothing is open, or at ``max_depth``, whose expansions are the final roll-out: they run on to the end
of their traces, so the width still open then finishes with answers. The answer is the weighted majority of
the finished leaves, each weighted by its aggregated PRM score.

Memory: each depth's trace has ``live_nodes`` / ``retained_tokens`` (the kept tree: growing nodes and their
ancestors, each shared node once, generated tokens) and the reference's own measure, ``frontier_nodes`` /
``frontier_tokens`` (ETS's ``get_kv_size``: every frontier node of the depth, pruned ones included, with its
ancestors, plus the prompt), so figures compare with the paper's.
"""

from __future__ import annotations

import math
from typing import Awaitable, Callable, Iterable, Sequence

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies.common import Path, StepSearchParams, grow, search_result
from strategies.params import Temperature


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


def live_nodes(kept: Iterable[Path]) -> int:
    """Nodes whose KV must stay cached for the next depth: the growing nodes and every ancestor of theirs
    (equal prefixes counted once, as the prefix cache holds them once)."""
    kept = list(kept)
    return len({a for k in kept for a in k.parents} | {k.text for k in kept})


def retained_tokens(kept: Iterable[Path]) -> int:
    """Generated tokens of the tree :func:`live_nodes` counts (the growing nodes and their ancestors), each
    shared node once: what the reference's KV-size figure measures in tokens (the prompt, common to every
    node, left out)."""
    own: dict[str, int] = {}
    for k in kept:
        chain = list(zip(k.parents, k.parent_tokens)) + [(k.text, k.tokens)]
        below = 0
        for text, tokens in chain:
            own[text] = tokens - below
            below = tokens
    return sum(own.values())


def memory(kept: Iterable[Path], frontier: Sequence[Path], prompt_tokens: int) -> dict[str, int]:
    """The trace's memory figures for one depth: live nodes and their retained tokens (the kept tree), and the
    reference's measure over the whole frontier (every open node, pruned ones included, with its ancestors)
    plus the prompt's tokens."""
    kept = list(kept)
    return {
        "live_nodes": live_nodes(kept),
        "retained_tokens": retained_tokens(kept),
        "frontier_nodes": live_nodes(frontier) + 1,  # the prompt's node: the root
        "frontier_tokens": retained_tokens(frontier) + prompt_tokens,
    }


class Params(StepSearchParams):
    width: int = Field(8, ge=1, le=256, description="Leaves the search may finish (the root's children).")
    softmax_temperature: float = Field(0.2, gt=0.0, le=10.0, description="Temperature of the score softmax (the paper's 0.2).")
    max_depth: int = Field(
        40, ge=1, le=1024, description="Depths; the last one rolls every open node out to the end (default: the profile's `scale.tree_depth`)."
    )
    temperature: Temperature = Field(1.0, description="Sampling temperature (the paper's 1.0, unless the model profile sets one).")

    PROFILE_DEFAULTS = {
        **StepSearchParams.PROFILE_DEFAULTS,
        "step_tokens": lambda p: p.scale.tree_step_tokens,
        "max_depth": lambda p: p.scale.tree_depth,
    }


# Chooses which open nodes grow and by how many children: (kept nodes, their shares, what to trace).
Prune = Callable[[list[Path], int], Awaitable[tuple[list[Path], list[int], dict[str, object]]]]


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    prompt_tokens = await ctx.tokens(problem.prompt)

    async def shares(frontier: list[Path], remaining: int) -> tuple[list[Path], list[int], dict[str, object]]:
        alloc = allocate([k.score for k in frontier], remaining, params.softmax_temperature)
        return frontier, alloc, memory((k for k, a in zip(frontier, alloc) if a > 0), frontier, prompt_tokens)

    return await search(problem, ctx, params, shares)


async def search(problem: Problem, ctx: StrategyContext, params: Params, prune: Prune) -> StrategyResult:
    """The REBASE tree loop; ``prune`` decides, at every depth, which open nodes grow by how much."""
    cfg = params.step_config(ctx.tools.profile)
    remaining = params.width
    frontier: list[Path] = [Path()]
    shares = [params.width]
    finished: list[Path] = []
    trace: list[dict[str, object]] = []
    limited = False
    for depth in range(params.max_depth):
        last = depth == params.max_depth - 1
        kids, limited = await grow(ctx, problem, list(zip(frontier, shares)), cfg, params.aggregation, hop=2 * depth, to_end=last)
        if not kids:
            break
        done = [k for k in kids if k.done]
        finished += done
        remaining -= len(done)
        frontier = [k for k in kids if not k.done]
        step: dict[str, object] = {"depth": depth, "expanded": len(kids), "finished": len(done), "remaining": remaining}
        step["scores"] = [round(k.score, 4) for k in frontier]
        if frontier and remaining > 0 and not limited:
            frontier, shares, extra = await prune(frontier, remaining)
            step |= extra | {"allocation": shares}
        trace.append(step)
        ctx.emit({"stage": "depth", "depth": depth, "open": len(frontier), "remaining": remaining})
        if limited or remaining <= 0 or not frontier:
            break
    return search_result(ctx, finished, frontier, params.selection, trace, limited=limited)


SPEC = StrategySpec(
    name="rebase",
    params=Params,
    run=run,
    summary="REBASE: the width left is shared among open nodes by a softmax of their PRM scores",
    # At most `width` children per depth (shares sum to the width left), the final roll-out `width` whole paths.
    worst_case=lambda p: p.width * (p.step_tokens * min(p.max_depth, p.max_tokens) + p.max_tokens),
    needs=lambda p: frozenset({"prm"}),
)
