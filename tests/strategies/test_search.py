"""Beam search and REBASE logic on a scripted engine and PRM: widths, allocations, budgets."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest
from pydantic import ValidationError

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
        assert step["sampled"] == 8 and step["kept"] <= 2
        if not step["topped_up"]:  # the answer step is topped up to n finished beams (tested below)
            assert step["completed"] <= 2 and step["rejected_at_tau"] >= 6
    partial = [c for c in engine.calls if c.max_tokens == 2]
    assert partial and all(c.stop == ("\n",) for c in partial)
    assert er.answer == "3"  # the good branch, judged after 2 of its 6 words
    # The saving: rejected candidates cost tau tokens, not a whole step.
    beam_ctx = results["beam_search"][1]
    assert ctx.tally.usage.completion_tokens < 0.6 * beam_ctx.tally.usage.completion_tokens


def run_words(name, prm=None, engine=None, **params):
    from tests.strategies.scripted import WordStepEngine

    engine = engine or WordStepEngine(3)
    ctx, calls = context(engine, step_scorer=prm or WordPRM())
    spec = REGISTRY[name]
    return asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(n=8, beam_width=4, **params))), ctx, engine


def test_early_rejection_chooses_among_as_many_candidates_as_beam_search():
    bs, *_ = run_words("beam_search")
    er, ctx, engine = run_words("early_rejection", tau=2)
    assert len(bs.candidates) == 8 and bs.info["finished"] == 8
    # Default: n finished beams, as beam search; the answer step completes the 6 candidates the kept 2 left.
    assert len(er.candidates) == 8 and er.info["finished"] == 8
    assert er.trace[-1]["kept"] == 2 and er.trace[-1]["topped_up"] == 6 and er.trace[-1]["rejected_at_tau"] == 0
    assert all(c.answer in ("3", "4") for c in er.candidates)
    # The reference's stopping point: n // beam_width finished beams, nothing topped up.
    ref, ref_ctx, _ = run_words("early_rejection", tau=2, finished_beams=2)
    assert len(ref.candidates) == 2 and all(step["topped_up"] == 0 for step in ref.trace)
    assert ref_ctx.tally.usage.completion_tokens <= ctx.tally.usage.completion_tokens


def test_early_rejection_tops_up_by_completing_the_next_best_candidates():
    er, ctx, engine = run_words("early_rejection", tau=1)
    last = er.trace[-1]
    assert last["topped_up"] == 6 and er.info["finished"] == 8
    # One-word partials: every answer line ("Answer: A", 2 words) was cut at tau and completed, kept or topped up.
    completions = [c for c in engine.calls if c.max_tokens == 64 - 1 and c.prompt.endswith("Answer:")]
    assert len(completions) == 8 and last["completed"] == 8


class AnswerPRM(WordPRM):
    """Like WordPRM, but an answer line scores 0.9 when it answers 4 and 0.6 when it answers 3."""

    async def step_scores(self, engine, question, solution):
        scores = list(await super().step_scores(engine, question, solution))
        last = solution.strip().split("\n")[-1]
        if last.startswith("Answer:"):
            scores[-1] = 0.9 if last.endswith("4") else 0.6
        return tuple(scores)


def test_top_beam_is_the_reference_answer_rule():
    from tests.strategies.scripted import WordStepEngine

    class MostlyThree(WordStepEngine):
        """Answers 3 three times in four (j % 4 == 3 answers 4)."""

        async def generate(self, role, spec):
            gen = await super().generate(role, spec)
            swap = {1: ("Answer: 4", "Answer: 3"), 3: ("Answer: 3", "Answer: 4")}  # by j % 4
            comps = tuple(replace(c, text=c.text.replace(*swap[j % 4])) if j % 4 in swap else c for j, c in enumerate(gen.completions))
            return replace(gen, completions=comps)

    results = {sel: run_words("early_rejection", tau=2, prm=AnswerPRM(), engine=MostlyThree(3), selection=sel)[0] for sel in ("weighted", "top_beam")}
    # Six 3s at 0.6 outweigh two 4s at 0.9; the top beam is a 4.
    assert sorted(c.answer for c in results["weighted"].candidates) == ["3"] * 6 + ["4"] * 2
    assert results["weighted"].answer == "3" and results["top_beam"].answer == "4"
    assert results["top_beam"].text.endswith("Answer: 4")


def test_early_rejection_parameters():
    spec = REGISTRY["early_rejection"]
    with pytest.raises(ValidationError) as err:
        spec.params(n=8, beam_width=4, finished_beams=9)
    assert err.value.errors()[0]["loc"] == ("finished_beams",)
    with pytest.raises(ValueError):
        spec.params(selection="best")
    assert spec.params(selection="top_beam", finished_beams=2).finished_beams == 2
    # The cost bound covers the topped-up completions (n of them) by default, n // beam_width for the reference.
    assert spec.worst_case(spec.params(n=8, beam_width=4, finished_beams=2)) < spec.worst_case(spec.params(n=8, beam_width=4))


def test_early_rejection_tau_must_be_below_a_step():
    with pytest.raises(ValueError, match="tau"):
        REGISTRY["early_rejection"].params(tau=64, step_tokens=64)


def test_dvts_runs_independent_greedy_subtrees_of_width_beam_width():
    result, engine, _, calls = run("dvts", n=8, beam_width=4)
    # Two subtrees, each sampling 4 next steps of its one node per call: never a global pruning.
    assert [c.n for c in engine.calls] == [4] * len(engine.calls)
    assert len(engine.calls) == 2 * len(result.trace)
    assert all(step["subtrees"] <= 2 for step in result.trace)
    # Each subtree follows its best-scored child: good, good, good; then its last expansion's 4 children are
    # all finals (search-and-learn's DVTS returns every subtree's beam_width finals): answers 3 and 4 (even
    # completions say 3), and the PRM-weighted vote picks 3.
    assert len(result.candidates) == 8 and sorted(c.answer for c in result.candidates) == ["3"] * 4 + ["4"] * 4
    assert result.answer == "3"
    assert {c.stage for c in calls} == {"expand"}  # (the scripted PRM makes no engine call)


def test_dvts_needs_divisible_width_and_a_prm():
    with pytest.raises(ValueError, match="multiple of beam_width"):
        REGISTRY["dvts"].params(n=6, beam_width=4)
    assert REGISTRY["dvts"].needs(REGISTRY["dvts"].params()) == {"prm"}
