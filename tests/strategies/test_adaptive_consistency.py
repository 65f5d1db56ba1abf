"""Adaptive consistency's stopping rule and waves on scripted answers (no engine)."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import ValidationError

from orchestrator.profile import BUNDLED
from orchestrator.types import Completion, Generation, Problem, Usage
from strategies import REGISTRY
from strategies.adaptive_consistency import decide, lead_confidence
from tests.strategies.scripted import WordPRM, context


class AnswerEngine:
    """Sample j of a call seeded s answers ``answers[s + j]`` (as an engine seeds sample j with s + j), so a
    sample's answer depends on its seed alone; every call is recorded."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    async def generate(self, role, spec):
        self.calls.append(spec)
        texts = [f"1+1=2\nAnswer: {self.answers[spec.seed + j]}" for j in range(spec.n)]
        comps = tuple(Completion(t, 5, "stop") for t in texts)
        return Generation(comps, Usage(prompt_tokens=3, completion_tokens=5 * spec.n), worker="scripted-0")


def run(answers, name="adaptive_consistency", total_tokens=None, **params):
    engine = AnswerEngine(answers)
    ctx, calls = context(engine, total_tokens=total_tokens, step_scorer=WordPRM())
    spec = REGISTRY[name]
    result = asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(seed=0, **params)))
    return result, engine, ctx


def test_unanimity_stops_after_the_first_wave():
    result, engine, ctx = run(["7"] * 16)
    assert [c.n for c in engine.calls] == [4]
    assert result.answer == "7" and result.info["stopped"] == "confident" and result.info["samples"] == 4
    (wave,) = result.trace
    assert wave["decision"] == "confident" and wave["confidence"] == pytest.approx(1 - 0.5**5, abs=1e-4)
    assert ctx.tally.events[-1]["stage"] == "wave"  # the decision is in the request's events too


def test_never_stops_before_its_minimum_wave():
    # A confidence any single vote meets: only min_samples holds the rule back.
    result, engine, _ = run(["7"] * 16, min_samples=6, confidence=0.51)
    assert [c.n for c in engine.calls] == [6] and result.info["samples"] == 6
    for votes in ({"7": 5}, {"7": 3, "5": 2}):
        assert decide(votes, samples=5, n=16, min_samples=6, confidence=0.51).stop is None


def test_never_exceeds_n_and_waves_are_distinct_seeds():
    answers = ["5", "7"] * 8  # a dead heat: never confident, never settled
    result, engine, _ = run(answers, n=10, wave=4, min_samples=4)
    assert [c.n for c in engine.calls] == [4, 4, 2]  # the last wave is cut at n
    assert [c.seed for c in engine.calls] == [0, 4, 8]  # wave w starts after the samples before it
    assert result.info["samples"] == 10 and result.info["stopped"] == "exhausted"
    assert [w["decision"] for w in result.trace] == ["continue", "continue", "exhausted"]
    assert len(result.candidates) == 10


def test_a_lead_the_rest_cannot_overturn_is_settled():
    assert decide({"7": 6, "5": 1}, samples=7, n=8, min_samples=4, confidence=0.999).stop == "settled"
    assert decide({"7": 6, "5": 1}, samples=7, n=12, min_samples=4, confidence=0.999).stop is None
    # A tie at the end would go to the first-seen answer: a lead equal to what is left is not settled.
    assert decide({"7": 3, "5": 1}, samples=4, n=6, min_samples=4, confidence=0.999).stop is None
    result, engine, _ = run(["7", "7", "7", "5", "7", "7", "7", "7"], n=8, wave=1, min_samples=4, confidence=0.999)
    assert result.info["stopped"] == "settled" and result.info["samples"] == 6  # 5 to 1, 2 left and result.answer == "7"


def test_lead_confidence_is_the_beta_posterior():
    assert lead_confidence({}) == pytest.approx(0.5)
    assert lead_confidence({"7": 4}) == pytest.approx(1 - 0.5**5)
    assert lead_confidence({"7": 3, "5": 3, "9": 1}) == pytest.approx(0.5)
    assert lead_confidence({"7": 8, "5": 2}) > lead_confidence({"7": 4, "5": 1}) > lead_confidence({"7": 2})


def test_random_runs_respect_the_minimum_and_n():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 24)
        min_samples, wave = rng.randint(1, n), rng.randint(1, n)
        answers = [rng.choice("5577") for _ in range(n)]
        result, engine, _ = run(answers, n=n, wave=wave, min_samples=min_samples, confidence=rng.choice([0.6, 0.9, 0.95, 0.99]))
        drawn = sum(c.n for c in engine.calls)
        assert drawn == result.info["samples"] <= n
        assert drawn >= min_samples
        assert engine.calls[0].n == min_samples and all(c.n <= wave for c in engine.calls[1:])
        seeds = [s for c in engine.calls for s in range(c.seed, c.seed + c.n)]
        assert seeds == list(range(drawn))  # no sample drawn twice


def test_the_budget_ends_the_waves_with_what_was_drawn():
    # The first wave spends 3 + 4 x 5 of 26 tokens; the second has no room left for its prompt.
    result, engine, ctx = run(["5", "7"] * 8, total_tokens=26, n=16)
    assert result.finish_reason == "budget" and result.info["stopped"] == "budget"
    assert result.info["samples"] == 4 and ctx.meter.spent_tokens <= 26


@pytest.mark.parametrize("name", ["self_consistency", "best_of_n"])
def test_adaptive_is_an_option_of_self_consistency_and_best_of_n(name):
    result, engine, _ = run(["7"] * 16, name=name, n=16, adaptive=True)
    assert [c.n for c in engine.calls] == [4] and result.answer == "7" and result.info["stopped"] == "confident"
    assert result.trace[0]["decision"] == "confident"
    result, engine, _ = run(["7"] * 16, name=name, n=16)  # off by default: all n in one call
    assert [c.n for c in engine.calls] == [16]


@pytest.mark.parametrize(
    ("name", "bad", "field"),
    [
        ("adaptive_consistency", {"wave": 0}, "wave"),
        ("adaptive_consistency", {"n": 4, "wave": 5}, "wave"),
        ("adaptive_consistency", {"n": 4, "min_samples": 8}, "min_samples"),
        ("adaptive_consistency", {"confidence": 0.5}, "confidence"),
        ("adaptive_consistency", {"confidence": 1}, "confidence"),
        ("self_consistency", {"adaptive": True, "n": 4, "min_samples": 5}, "min_samples"),
        ("self_consistency", {"wave": 2}, "wave"),  # only meaningful with adaptive
        ("best_of_n", {"adaptive": True, "confidence": 2}, "confidence"),
    ],
)
def test_bad_wave_parameters_name_their_field(name, bad, field):
    with pytest.raises(ValidationError) as err:
        REGISTRY[name].parse(bad, profile=BUNDLED["bundled"])
    assert err.value.errors()[0]["loc"] == (field,)


def test_a_default_minimum_above_a_small_n_is_cut_to_n():
    result, engine, _ = run(["7"] * 2, n=2)
    assert [c.n for c in engine.calls] == [2] and result.info["stopped"] == "exhausted"
