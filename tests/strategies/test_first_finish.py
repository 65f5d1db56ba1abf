"""First Finish Search logic against a scripted engine whose samples take different times."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import StrategyContext
from orchestrator.tally import Tally
from orchestrator.toolbox import Toolbox
from orchestrator.types import Completion, Generation, Problem, StreamDelta, Usage
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

    ctx = StrategyContext(engine=engine, tools=Toolbox(verifier=TaskAnswerVerifier()), tally=Tally(sink=sink), meter=BudgetMeter(Budget()))
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
    assert ctx.tally.usage.completion_tokens == sum(c.tokens for c in result.candidates)


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


class PromptedEngine(TimedEngine):
    """A :class:`TimedEngine` that also keeps the prompt of every call, by sample (seed)."""

    def __init__(self, texts, delays):
        super().__init__(texts, delays)
        self.prompts: dict[int, str] = {}

    async def generate(self, role, spec):
        self.prompts[spec.seed] = spec.prompt
        return await super().generate(role, spec)


def run_prompted(texts, delays, **params):
    engine = PromptedEngine(texts, delays)
    ctx = StrategyContext(engine=engine, tools=Toolbox(verifier=TaskAnswerVerifier()), tally=Tally(sink=_ignore), meter=BudgetMeter(Budget()))
    spec = REGISTRY["first_finish"]
    return asyncio.run(spec.run(Problem("q\n"), ctx, spec.params(seed=0, n=len(texts), **params))), engine


async def _ignore(call):
    pass


def test_openings_are_prefilled_per_sample_and_read_as_part_of_the_answer():
    # Sample 0's continuation holds only the number: the answer line is its opening's.
    texts = [" 5", "Answer: 2", " 9", "Answer: 4"]
    result, engine = run_prompted(texts, [0.05, 0.3, 0.4, 0.5], openings=["Answer:", "1+1=2\n"])
    assert engine.prompts == {0: "q\nAnswer:", 1: "q\n1+1=2\n", 2: "q\nAnswer:", 3: "q\n1+1=2\n"}
    assert result.answer == "5" and result.text == "Answer: 5"
    assert result.candidates[1].text.startswith("1+1=2\n")  # an aborted sample keeps its opening too
    assert result.candidates[0].tokens == len(" 5") + 1  # the opening is prompt, not generated


def test_without_openings_the_prompt_is_unchanged():
    _, engine = run_prompted(["Answer: 1", "Answer: 2"], [0.05, 0.1])
    assert set(engine.prompts.values()) == {"q\n"}


def test_a_lockstep_batch_takes_at_most_one_opening():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        REGISTRY["first_finish"].params(mode="sync", openings=["a", "b"])
    assert err.value.errors()[0]["loc"] == ("openings",)
    assert REGISTRY["first_finish"].params(mode="sync", openings=["a"]).opening(3) == "a"
    for bad in ({"openings": [""]}, {"finish": "middle"}):
        with pytest.raises(ValidationError):
            REGISTRY["first_finish"].params(**bad)


def test_last_finish_waits_for_every_sample_and_takes_the_last_answered():
    texts = ["Answer: 5", "Answer: 7", "no answer", "Answer: 9"]
    delays = [0.05, 0.1, 0.4, 0.25]  # the last to finish (2) has no answer: 3 is the last answered
    result, engine, calls, ctx = run(texts, delays, finish="last")
    assert result.answer == "9" and result.info["winner"] == 3
    assert result.info["aborted"] == [] and engine.aborted == []
    assert result.info["finish_order"] == [0, 1, 3, 2]
    assert all(c.finish_reason == "stop" for c in result.candidates)
    # k > 1: the majority of the last k answered (ties to the latest).
    result, *_ = run(["Answer: 5", "Answer: 7", "Answer: 7", "Answer: 5"], [0.05, 0.1, 0.15, 0.2], finish="last", k=3)
    assert result.answer == "7" and result.info["votes"] == {"5": 1, "7": 2}


class LockstepEngine:
    """One call of n sequences streamed a token (a character) at a time, in lockstep; sequence i writes texts[i]."""

    def __init__(self, texts):
        self.texts = texts
        self.prompts: list[str] = []
        self.aborted = False

    async def tokenize(self, role, text):
        return list(text)

    async def abort(self, ids):
        self.aborted = True

    async def stream(self, role, spec):
        self.prompts.append(spec.prompt)
        self.aborted = False
        for t in range(max(map(len, self.texts))):
            await asyncio.sleep(0)
            if self.aborted:  # the unfinished sequences end as aborted
                for i, text in enumerate(self.texts[: spec.n]):
                    if t < len(text):
                        yield StreamDelta(i, "", t, "abort")
                return
            for i, text in enumerate(self.texts[: spec.n]):
                if t < len(text):
                    yield StreamDelta(i, text[t], t + 1, "stop" if t == len(text) - 1 else None)


def test_sync_last_finish_runs_the_batch_to_its_end_with_one_opening():
    texts = ["Answer: 12", "x\nAnswer: 3", "Answer: 4"]
    engine = LockstepEngine(texts)
    ctx = StrategyContext(engine=engine, tools=Toolbox(verifier=TaskAnswerVerifier()), tally=Tally(sink=_ignore), meter=BudgetMeter(Budget()))
    spec = REGISTRY["first_finish"]
    for finish, answer in (("first", "4"), ("last", "3")):
        params = spec.params(seed=0, n=3, mode="sync", finish=finish, openings=["7+1=8\n"])
        result = asyncio.run(spec.run(Problem("q\n"), ctx, params))
        assert result.answer == answer and result.text.startswith("7+1=8\n")
    assert engine.prompts == ["q\n7+1=8\n"] * 2
    assert result.info["finish_order"] == [2, 0, 1] and result.info["aborted"] == []


def test_k_at_n_takes_the_k_shortest_answered_traces():
    # FFS-k@N's cutoff is the k-th smallest token length among the answered traces, finish order breaking ties.
    from strategies.first_finish import _pick

    params = REGISTRY["first_finish"].params(n=4, k=2)
    assert _pick([3, 0, 1, 2], params, {0: 30, 1: 10, 2: 20, 3: 40}) == [1, 2]
    assert _pick([3, 0, 1], params, {0: 10, 1: 10, 3: 40}) == [0, 1]
    last = REGISTRY["first_finish"].params(n=4, k=2, finish="last")  # the paper's control is by time
    assert _pick([3, 0, 1, 2], last, {0: 30, 1: 10, 2: 20, 3: 40}) == [2, 1]


def test_sync_counts_only_answered_finishers():
    # The first sequence to end has no answer: it does not win, nor count towards k; the batch runs on.
    texts = ["x", "Answer: 3", "Answer: 4 and more"]
    engine = LockstepEngine(texts)
    ctx = StrategyContext(engine=engine, tools=Toolbox(verifier=TaskAnswerVerifier()), tally=Tally(sink=_ignore), meter=BudgetMeter(Budget()))
    spec = REGISTRY["first_finish"]
    result = asyncio.run(spec.run(Problem("q\n"), ctx, spec.params(seed=0, n=3, mode="sync")))
    assert result.answer == "3" and result.info["winner"] == 1
    assert result.info["finish_order"][:2] == [0, 1] and result.info["aborted"] == [2]


@pytest.mark.engine
def test_openings_in_the_bundled_format_on_the_engine(service):
    """The bundled model continues an opening that starts its first step line; the opening is in the text the
    task's checker reads (a trace without it would start mid-line)."""
    from tests.strategies.test_on_engine import run as run_engine
    from tasks import arithmetic as task

    p = task.generate("test", 1, seed=5, levels=[3])[0]
    (op, operand), start = p.ops[0], str(p.start)
    openings = [start, f"{start}{op}{operand}="]
    result, ctx, calls, engine = run_engine(service, "first_finish", question=p.question, n=4, seed=3, openings=openings)
    prompts = [s.prompt for s in engine.specs]
    assert sorted(prompts) == sorted(task.prompt_for(p.question) + openings[i % 2] for i in range(4))
    assert all(c.text.startswith(openings[i % 2]) for i, c in enumerate(result.candidates))
    assert result.answer is not None and result.text.startswith(start)
    # Opening and continuation make well-formed lines of the task: its first step is the opening's.
    first = task.check_steps(p, result.text)[0]
    assert first.kind != "malformed" and first.line.startswith(f"{start}{op}{operand}=")
