"""ETS: efficient tree search. REBASE whose kept set is chosen at every depth by an integer program.

At every depth the open nodes first get their REBASE shares of the width left (:func:`~strategies.rebase.allocate`);
a share's fraction of the width is the node's weight. An integer program (HiGHS, through scipy's ``milp``)
then chooses which open nodes to keep:

    maximise   sum_i w_i x_i  -  lambda_b / (A + L) * (sum_j y_j + sum_i x_i)  +  lambda_s / K * sum_k c_k

over x_i (keep open node i), y_j (keep ancestor j, the root included: a kept ancestor is KV cache that stays
live) and c_k (cluster k of semantically equal steps has a kept member), with y_j equal to "some kept node
descends from j", c_k at most "some member of k is kept", and at least one node kept. A is the number of
ancestors, L of open nodes, K of clusters. lambda_b prices retained nodes (shared KV), lambda_s rewards
covering different ideas. The width left is then shared again by REBASE among the kept nodes only, and
each is expanded into its share (children of a node share its token prefix, so the prefix cache serves it).

With lambda_b = lambda_s = 0 a vanishing node cost remains, so exactly the nodes REBASE gives children are
kept (:func:`select` ties otherwise). Clusters come from step embeddings (the ``embedder`` role), average-
linkage cosine clustering cut at ``cluster_threshold``.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
from pydantic import Field
from scipy.optimize import Bounds, LinearConstraint, milp

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies import rebase
from strategies.common import Path

# What lambda_b = 0 becomes: enough to drop nodes of zero weight (well above the solver's tolerances), too
# little to outweigh any share: a node and its ancestors cost at most TIE_COST < 1/256, the smallest share.
TIE_COST = 1e-3


def objective(
    keep: Sequence[bool], weights: Sequence[float], ancestors: Sequence[Sequence[Hashable]], clusters: Sequence[int], lambda_b: float, lambda_s: float
) -> float:
    """The program's objective for one choice of kept nodes (ancestors and clusters follow from it)."""
    kept = [i for i, k in enumerate(keep) if k]
    all_anc = {a for anc in ancestors for a in anc}
    live = {a for i in kept for a in ancestors[i]}
    k = len(set(clusters))
    unit = max(lambda_b, TIE_COST) / (len(all_anc) + len(weights))
    coverage = lambda_s / k * len({clusters[i] for i in kept}) if _coverage_on(weights, clusters, lambda_s) else 0.0
    return sum(weights[i] for i in kept) - unit * (len(live) + len(kept)) + coverage


def _coverage_on(weights: Sequence[float], clusters: Sequence[int], lambda_s: float) -> bool:
    return lambda_s > 0 and len(weights) > 1 and len(set(clusters)) > 1


def select(
    weights: Sequence[float],
    ancestors: Sequence[Sequence[Hashable]],
    clusters: Sequence[int],
    *,
    lambda_b: float,
    lambda_s: float,
) -> list[bool]:
    """Which open nodes to keep: the integer program above, solved exactly by HiGHS.

    ``weights[i]`` is node i's REBASE share of the width (fraction), ``ancestors[i]`` the ids of the nodes on
    its path (the root included), ``clusters[i]`` its step's cluster label."""
    n = len(weights)
    if n == 0:
        return []
    anc_ids = list(dict.fromkeys(a for anc in ancestors for a in anc))
    col = {a: n + j for j, a in enumerate(anc_ids)}
    labels = sorted(set(clusters))
    cover = _coverage_on(weights, clusters, lambda_s)
    k_off = n + len(anc_ids)
    size = k_off + (len(labels) if cover else 0)
    unit = max(lambda_b, TIE_COST) / (len(anc_ids) + n)
    c = np.zeros(size)
    c[:n] = -(np.asarray(weights, dtype=float) - unit)  # milp minimises
    c[n:k_off] = unit
    if cover:
        c[k_off:] = -lambda_s / len(labels)
    rows, lo, hi = [], [], []

    def row(entries: dict[int, float], low: float, high: float) -> None:
        r = np.zeros(size)
        for idx, v in entries.items():
            r[idx] += v
        rows.append(r), lo.append(low), hi.append(high)

    for a in anc_ids:
        under = [i for i in range(n) if a in ancestors[i]]
        row({col[a]: 1.0, **{i: -1.0 for i in under}}, -np.inf, 0.0)  # y_j <= sum of its kept nodes
        for i in under:
            row({i: 1.0, col[a]: -1.0}, -np.inf, 0.0)  # a kept node keeps its ancestors
    row({i: 1.0 for i in range(n)}, 1.0, np.inf)  # keep at least one
    if cover:
        for j, lab in enumerate(labels):
            row({k_off + j: 1.0, **{i: -1.0 for i in range(n) if clusters[i] == lab}}, -np.inf, 0.0)
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(size), bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
    if res.x is None:
        raise RuntimeError(f"ETS selection found no solution: {res.message}")
    return [bool(round(v)) for v in res.x[:n]]


class Params(rebase.Params):
    lambda_b: float = Field(1.0, ge=0.0, le=100.0, description="Price of every retained node (shared KV); the paper's 1.0.")
    lambda_s: float = Field(1.5, ge=0.0, le=100.0, description="Reward for covering step clusters; the paper's 1.5 (width 16).")
    cluster_threshold: float | None = Field(
        None, ge=0.0, le=2.0,
        description="Cosine distance under which steps are one cluster; default: the one calibrated for the server's clusterer (0.27 for the packaged embedder; the reference's 0.05 was tuned for its math embedder).",
    )


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    prompt_tokens = await ctx.tokens(problem.prompt)

    async def prune(frontier: list[Path], remaining: int) -> tuple[list[Path], list[int], dict[str, object]]:
        shares = rebase.allocate([k.score for k in frontier], remaining, params.softmax_temperature)
        if params.lambda_s > 0 and len(frontier) > 1:
            clusters = await ctx.cluster([k.last_step() for k in frontier], threshold=params.cluster_threshold)
        else:
            clusters = list(range(len(frontier)))
        keep = select([a / remaining for a in shares], [k.parents for k in frontier], clusters, lambda_b=params.lambda_b, lambda_s=params.lambda_s)
        kept = [k for k, f in zip(frontier, keep) if f]
        alloc = rebase.allocate([k.score for k in kept], remaining, params.softmax_temperature)
        extra = {
            "rebase_allocation": shares,
            "clusters": clusters,
            "kept": [i for i, f in enumerate(keep) if f],
            # As REBASE counts: a kept node the re-allocation gives no child holds no cache for the next depth.
            **rebase.memory((k for k, a in zip(kept, alloc) if a > 0), frontier, prompt_tokens),
        }
        return kept, alloc, extra

    return await rebase.search(problem, ctx, params, prune)


SPEC = StrategySpec(
    name="ets",
    params=Params,
    run=run,
    summary="ETS: REBASE whose kept nodes are chosen by an integer program (node cost vs coverage of step clusters)",
    worst_case=rebase.SPEC.worst_case,
    needs=lambda p: frozenset({"prm", "clusterer"} if p.lambda_s > 0 else {"prm"}),
)
