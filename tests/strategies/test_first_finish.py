"""First Finish Search logic against a scripted engine whose samples take different times."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import StrategyContext
from orchestrator.toolbox import Toolbox
from orchestrator.types import Completion, Generation, Problem, Usage
from strategies import REGISTRY
from verifiers import TaskAnswerVerifier


class TimedEngine:
    """Sample i (by seed offset) takes delays[i] seconds and returns texts[i]; aborted ones return half."""

    def __init__(self, texts, delays):
        self.texts, self.delays = texts, delays
        self.events: dict[str, asyncio.Event] = {}
        self.aborted: list[str] = []

    async def generate(self, role, spec):
        i = spec.seed
        ev = self.events.setdefault(spec.request_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), self.delays[i])
            text, reason = self.texts[i][: len(self.texts[i]) // 2], "abort"
        except TimeoutError:
            text, reason = self.texts[i], "stop"
        tokens = len(text) + (reason == "stop")
        return Generation((Completion(text, tokens, reason),), Usage(prompt_tokens=3, completion_tokens=tokens), worker="timed-0")

    async def abort(self, ids):
        self.aborted.extend(ids)
        for rid in ids:
            self.events.setdefault(rid, asyncio.Event()).set()


def run(texts, delays, **params):
    engine = TimedEngine(texts, delays)
    calls = []

    async def sink(call):
        calls.append(call)

    ctx = StrategyContext(engine=engine, tools=Toolbox(verifier=TaskAnswerVerifier()), sink=sink, meter=BudgetMeter(Budget()))
    spec = REGISTRY["first_finish"]
    result = asyncio.run(spec.run(Problem("q\n"), ctx, spec.params(seed=0, n=len(texts), **params)))
    return result, engine, calls, ctx


def test_first_answered_wins_and_the_rest_are_aborted_but_charged():
    texts = ["1+1=2\nAnswer: 2", "no answer at all", "1+2=3\nAnswer: 3", "1+3=4\nAnswer: 4"]
    delays = [0.6, 0.05, 0.1, 0.8]  # sample 1 finishes first but has no answer
    result, engine, calls, ctx = run(texts, delays)
    assert result.answer == "3" and result.info["winner"] == 2
    assert result.info["aborted"] == [0, 3] and len(engine.aborted) == 2
    assert [c.finish_reason for c in result.candidates] == ["abort", "stop", "stop", "abort"]
    assert len(calls) == 4  # every sample, aborted ones included, is in the ledger
    assert ctx.usage.completion_tokens == sum(c.tokens for c in result.candidates)


def test_ffs_k_takes_the_majority_of_the_first_k_answers():
    texts = ["Answer: 5", "Answer: 7", "Answer: 7", "Answer: 5", "Answer: 9"]
    delays = [0.05, 0.1, 0.15, 0.6, 0.7]
    result, *_ = run(texts, delays, k=3)
    assert result.answer == "7" and result.info["aborted"] == [3, 4]


def test_no_answer_anywhere_returns_the_first_finisher():
    result, *_ = run(["x", "y"], [0.1, 0.05])
    assert result.answer is None and result.info["winner"] == 1 and result.info["aborted"] == []


def test_k_cannot_exceed_n():
    with pytest.raises(ValueError, match="cannot exceed"):
        REGISTRY["first_finish"].params(n=2, k=3)
