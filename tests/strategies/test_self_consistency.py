"""Pure strategy logic against a scripted engine (the real-engine path is tested in tests/api)."""

import asyncio

import pytest

from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import StrategyContext
from orchestrator.tally import Tally
from orchestrator.errors import BudgetExceeded
from orchestrator.toolbox import Toolbox
from orchestrator.types import Completion, Generation, Problem, SamplingSpec, Usage
from strategies import REGISTRY
from verifiers import TaskAnswerVerifier


class ScriptedEngine:
    """Returns fixed texts and records every request."""

    def __init__(self, texts):
        self.texts = texts
        self.requests: list[SamplingSpec] = []

    async def generate(self, role, spec):
        self.requests.append(spec)
        comps = tuple(Completion(t, len(t) + 1, "stop") for t in self.texts[: spec.n])
        return Generation(comps, Usage(prompt_tokens=10, completion_tokens=sum(c.tokens for c in comps)), worker="scripted-0")

    async def render_chat(self, role, messages):
        return messages[-1]["content"] + "\n"

    def roles(self):
        return frozenset({"policy"})


def run(texts, **params):
    engine = ScriptedEngine(texts)
    calls = []

    async def sink(call):
        calls.append(call)

    spec = REGISTRY["self_consistency"]
    meter = BudgetMeter(Budget(total_tokens=params.pop("budget", None)))
    ctx = StrategyContext(engine=engine, tools=Toolbox(verifier=TaskAnswerVerifier()), tally=Tally(sink=sink), meter=meter)
    result = asyncio.run(spec.run(Problem("q\n"), ctx, spec.params(**params)))
    return result, engine, calls, ctx


def test_majority_wins_and_usage_is_recorded():
    texts = ["Answer: 5", "Answer: 7", "x\nAnswer: 7", "Answer: 5", "Answer: 7", "no answer"]
    result, engine, calls, ctx = run(texts, n=6)
    assert result.answer == "7" and result.text == "Answer: 7"
    assert result.info["votes"] == {"5": 2, "7": 3}
    assert engine.requests[0].n == 6 and engine.requests[0].max_tokens == 256
    assert len(calls) == 1 and calls[0].stage == "sample" and calls[0].worker == "scripted-0"
    assert ctx.tally.usage.completion_tokens == sum(len(t) + 1 for t in texts)


def test_tie_goes_to_first_seen_and_no_answer_returns_first_sample():
    result, *_ = run(["Answer: 9", "Answer: 4"], n=2)
    assert result.answer == "9"
    result, *_ = run(["nothing", "still nothing"], n=2)
    assert result.answer is None and result.text == "nothing"


def test_budget_cuts_max_tokens_to_what_is_left_and_refuses_when_nothing_is():
    result, engine, calls, ctx = run(["Answer: 1"] * 4, n=4, max_tokens=50, budget=100)
    # prompt "q\n" is bounded by 3 bytes + 2 = 5 tokens; (100 - 5) // 4 = 23 tokens per sample
    assert engine.requests[0].max_tokens == 24 and ctx.budget_limited
    with pytest.raises(BudgetExceeded, match="no room"):
        run(["Answer: 1"], n=4, max_tokens=50, budget=6)  # 2 tokens left for 4 samples


@pytest.mark.parametrize("bad", [{"n": 0}, {"n": 10_000}, {"temperature": -1}, {"bogus": 1}])
def test_params_reject_bad_values(bad):
    with pytest.raises(Exception):
        REGISTRY["self_consistency"].params(**bad)
