"""ETS's integer program against exhaustive search, its REBASE limit, and the search on a scripted engine."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from orchestrator.types import Problem
from strategies import REGISTRY
from strategies.ets import TIE_COST, objective, select
from strategies.rebase import allocate
from tests.strategies.scripted import StepEngine, WordPRM, context


def random_tree(rng: random.Random, leaves: int):
    """Open nodes with random ancestry: paths of depth 1-3 through a few shared internal nodes."""
    ancestors = []
    for _ in range(leaves):
        depth = rng.randint(1, 3)
        path = [""] + [f"d{d}-{rng.randint(0, 2)}" for d in range(1, depth)]
        ancestors.append(tuple(path))
    return ancestors


@pytest.mark.parametrize("seed", range(60))
def test_program_matches_exhaustive_search(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    scores = [rng.random() for _ in range(n)]
    width = rng.randint(n, 16)
    weights = [a / width for a in allocate(scores, width, rng.choice([0.1, 0.2, 1.0]))]
    ancestors = random_tree(rng, n)
    clusters = [rng.randint(0, 2) for _ in range(n)]
    lb, ls = rng.choice([0.0, 0.5, 1.0, 3.0]), rng.choice([0.0, 0.5, 1.5])
    got = select(weights, ancestors, clusters, lambda_b=lb, lambda_s=ls)
    best = max(
        objective(keep, weights, ancestors, clusters, lb, ls) for keep in itertools.product([False, True], repeat=n) if any(keep)
    )
    assert any(got)
    assert objective(got, weights, ancestors, clusters, lb, ls) == pytest.approx(best, abs=1e-9)


def test_without_costs_or_coverage_it_keeps_what_rebase_keeps():
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(1, 10)
        scores = [rng.random() for _ in range(n)]
        width = rng.randint(1, 20)
        shares = allocate(scores, width, 0.2)
        keep = select([a / width for a in shares], random_tree(rng, n), [0] * n, lambda_b=0.0, lambda_s=0.0)
        assert keep == [a > 0 for a in shares]
    assert TIE_COST < 1 / 256  # never outweighs a share of the largest width


def test_a_high_node_cost_keeps_fewer_branches_and_coverage_keeps_more():
    weights = [0.4, 0.3, 0.2, 0.1]
    ancestors = [("", "a"), ("", "b"), ("", "c"), ("", "d")]  # four separate branches
    cheap = select(weights, ancestors, [0, 1, 2, 3], lambda_b=0.0, lambda_s=0.0)
    dear = select(weights, ancestors, [0, 1, 2, 3], lambda_b=3.0, lambda_s=0.0)
    assert sum(cheap) == 4 and sum(dear) < 4 and dear[0]
    covered = select(weights, ancestors, [0, 1, 2, 3], lambda_b=3.0, lambda_s=3.0)
    assert sum(covered) > sum(dear)


class ClusterByText:
    threshold = 0.3

    async def clusters(self, engine, texts, threshold):
        first = {}
        return [first.setdefault(t.split("-")[-1], len(first)) for t in texts]


def test_ets_search_keeps_allocations_within_the_width():
    engine = StepEngine(3)
    ctx, _ = context(engine, step_scorer=WordPRM(), clusterer=ClusterByText())
    spec = REGISTRY["ets"]
    result = asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(width=8)))
    assert result.answer in ("3", "4")
    for depth in result.trace:
        if "allocation" in depth:
            assert sum(depth["allocation"]) == depth["remaining"] == sum(depth["rebase_allocation"])
            assert len(depth["allocation"]) == len(depth["kept"]) >= 1
    assert spec.needs(spec.params()) == {"prm", "clusterer"}


class EveryStepItsOwnCluster:
    threshold = 0.3

    async def clusters(self, engine, texts, threshold):
        return list(range(len(texts)))


def test_live_nodes_count_only_what_grows_as_rebase_counts_them():
    """When every node is its own cluster, covering a cluster (1.5) is worth more than a node costs (1.0), so
    ETS keeps the whole frontier and expands exactly what REBASE expands; kept nodes the re-allocation gives
    no child hold no cache for the next depth and must not count as live (they counted before)."""
    def run(name):
        ctx, _ = context(StepEngine(3), step_scorer=WordPRM(), clusterer=EveryStepItsOwnCluster())
        spec = REGISTRY[name]
        return asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(width=8, seed=1)))

    ets, rebase = run("ets"), run("rebase")
    ets_depths = [d for d in ets.trace if "live_nodes" in d]
    rebase_depths = [d for d in rebase.trace if "live_nodes" in d]
    assert ets_depths and [d["allocation"] for d in ets_depths] == [d["allocation"] for d in rebase_depths]
    assert any(0 in d["allocation"] for d in ets_depths)  # the case that was over-counted
    assert [d["live_nodes"] for d in ets_depths] == [d["live_nodes"] for d in rebase_depths]


def test_retained_tokens_count_each_shared_node_once():
    """Two open nodes under one shared parent: the root's 0 tokens, the parent's 5, and each child's own 3 and 4
    (12 in all); the shared parent is not counted twice, and a node whose own tokens are those of its parent
    chain adds only what it generated."""
    from strategies.common import Path
    from strategies.rebase import memory

    parent = Path(text="a\n", tokens=5, parents=("",), parent_tokens=(0,))
    kids = [
        Path(text="a\nb\n", tokens=8, parents=parent.parents + (parent.text,), parent_tokens=parent.parent_tokens + (5,)),
        Path(text="a\nc\n", tokens=9, parents=parent.parents + (parent.text,), parent_tokens=parent.parent_tokens + (5,)),
    ]
    # The reference's measure counts the whole frontier (here both open nodes) and the prompt's 7 tokens.
    assert memory(kids, kids, 7) == {"live_nodes": 4, "retained_tokens": 12, "frontier_nodes": 5, "frontier_tokens": 19}
    assert memory(kids[:1], kids, 7) == {"live_nodes": 3, "retained_tokens": 8, "frontier_nodes": 5, "frontier_tokens": 19}
    assert memory([], [], 7) == {"live_nodes": 0, "retained_tokens": 0, "frontier_nodes": 1, "frontier_tokens": 7}


def test_every_depth_of_a_search_reports_its_retained_tokens():
    ctx, _ = context(StepEngine(3), step_scorer=WordPRM(), clusterer=EveryStepItsOwnCluster())
    spec = REGISTRY["ets"]
    result = asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(width=8, seed=1)))
    depths = [d for d in result.trace if "live_nodes" in d]
    assert depths and all(d["retained_tokens"] >= d["live_nodes"] - 1 > 0 for d in depths)


def test_the_cluster_threshold_defaults_to_the_one_calibrated_for_the_servers_clusterer():
    class Recording(ClusterByText):
        threshold = 0.27
        seen: list = []

        async def clusters(self, engine, texts, threshold):
            self.seen.append(threshold)
            return await super().clusters(engine, texts, threshold)

    clusterer = Recording()
    ctx, _ = context(StepEngine(3), step_scorer=WordPRM(), clusterer=clusterer)
    spec = REGISTRY["ets"]
    asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(width=8)))
    asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(width=8, cluster_threshold=0.05)))
    assert 0.27 in clusterer.seen and 0.05 in clusterer.seen and set(clusterer.seen) == {0.27, 0.05}
    from verifiers.embeddings import EMBEDDER_THRESHOLD, LexicalClusterer, StepClusterer

    assert StepClusterer(None).threshold == EMBEDDER_THRESHOLD and LexicalClusterer().threshold > EMBEDDER_THRESHOLD
