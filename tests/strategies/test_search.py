"""Beam search and REBASE logic on a scripted engine and PRM: widths, allocations, budgets."""

from __future__ import annotations

import asyncio
import random

import pytest

from orchestrator.types import Problem
from strategies import REGISTRY
from strategies.rebase import allocate
from tests.strategies.scripted import StepEngine, WordPRM, context


def run(name, depth=3, **params):
    engine = StepEngine(depth)
    total = params.pop("total_tokens", None)
    ctx, calls = context(engine, step_scorer=WordPRM(), total_tokens=total)
    spec = REGISTRY[name]
    result = asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(**params)))
    return result, engine, ctx, calls


def test_beam_search_expands_exactly_n_and_keeps_n_over_width():
    result, engine, ctx, _ = run("beam_search", n=8, beam_width=4)
    assert result.trace, "no search step recorded"
    for step in result.trace:
        assert step["expanded"] == 8
        assert step["kept"] <= 2
    # Every expansion call extends one survivor beam_width times (the first extends the root n times).
    assert [c.n for c in engine.calls] == [8] + [4] * (len(engine.calls) - 1)
    # The PRM keeps the good branch: every finished beam went good, good, good and answers 3 or 4.
    assert all(c.answer in ("3", "4") for c in result.candidates)
    assert result.answer in ("3", "4")


def test_beam_search_needs_divisible_width_and_a_prm():
    with pytest.raises(ValueError, match="multiple of beam_width"):
        REGISTRY["beam_search"].params(n=6, beam_width=4)
    assert REGISTRY["beam_search"].needs(REGISTRY["beam_search"].params()) == {"prm"}


def test_rebase_allocations_sum_to_the_remaining_width():
    result, *_ = run("rebase", width=8)
    assert result.trace
    for depth in result.trace:
        if depth["scores"]:
            assert sum(depth["allocation"]) == depth["remaining"]
    assert result.info["finished"] == 8  # every unit of the width ended as a finished leaf


def test_allocate_is_exact_and_prefers_higher_scores():
    rng = random.Random(0)
    for _ in range(500):
        scores = [rng.random() for _ in range(rng.randint(1, 12))]
        width, temp = rng.randint(0, 40), rng.choice([0.05, 0.2, 1.0, 5.0])
        shares = allocate(scores, width, temp)
        assert sum(shares) == width and min(shares) >= 0
        best = max(range(len(scores)), key=lambda i: scores[i])
        assert shares[best] == max(shares)
    assert allocate([0.5, 0.5], 4, 0.2) == [2, 2]
    assert allocate([0.9, 0.1], 8, 0.01) == [8, 0]  # low temperature: all to the best


def test_search_returns_best_so_far_when_the_budget_runs_out():
    result, _, ctx, calls = run("beam_search", n=4, beam_width=2, total_tokens=40)
    assert result.finish_reason == "budget"
    assert ctx.meter.spent_tokens <= 40
    assert result.candidates  # open beams stand in for finished ones


def test_early_rejection_completes_only_the_kept_candidates():
    from tests.strategies.scripted import WordStepEngine

    results = {}
    for name, params in (("early_rejection", {"tau": 2}), ("beam_search", {})):
        engine = WordStepEngine(3)
        ctx, calls = context(engine, step_scorer=WordPRM())
        spec = REGISTRY[name]
        results[name] = (asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(n=8, beam_width=4, **params))), ctx, engine)
    er, ctx, engine = results["early_rejection"]
    for step in er.trace:
        assert step["sampled"] == 8 and step["kept"] <= 2 and step["completed"] <= 2
        assert step["rejected_at_tau"] >= 6
    partial = [c for c in engine.calls if c.max_tokens == 2]
    assert partial and all(c.stop == ("\n",) for c in partial)
    assert er.answer == "3"  # the good branch, judged after 2 of its 6 words
    # The saving: rejected candidates cost tau tokens, not a whole step.
    beam_ctx = results["beam_search"][1]
    assert ctx.usage.completion_tokens < 0.6 * beam_ctx.usage.completion_tokens


def test_early_rejection_tau_must_be_below_a_step():
    with pytest.raises(ValueError, match="tau"):
        REGISTRY["early_rejection"].params(tau=64, step_tokens=64)


def test_dvts_runs_independent_greedy_subtrees_of_width_beam_width():
    result, engine, _, calls = run("dvts", n=8, beam_width=4)
    # Two subtrees, each sampling 4 next steps of its one node per call: never a global pruning.
    assert [c.n for c in engine.calls] == [4] * len(engine.calls)
    assert len(engine.calls) == 2 * len(result.trace)
    assert all(step["subtrees"] <= 2 for step in result.trace)
    # Each subtree follows its best-scored child: good, good, good, then the answer 3 (even completions are good).
    assert len(result.candidates) == 2 and {c.answer for c in result.candidates} == {"3"}
    assert {c.stage for c in calls} == {"expand"}  # (the scripted PRM makes no engine call)


def test_dvts_needs_divisible_width_and_a_prm():
    with pytest.raises(ValueError, match="multiple of beam_width"):
        REGISTRY["dvts"].params(n=6, beam_width=4)
    assert REGISTRY["dvts"].needs(REGISTRY["dvts"].params()) == {"prm"}
