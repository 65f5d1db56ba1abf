"""Step-wise search on a model profile's terms (a blank-line delimiter, answers that end nothing), the rule
that a truncated trace is never answered, and ``max_tokens`` bounds that come from the profile."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from orchestrator.profile import BUNDLED, ModelProfile
from orchestrator.types import Completion, Generation, Problem, Usage
from strategies import REGISTRY
from strategies.common import Path, StepConfig, extend
from tests.strategies.scripted import WordPRM, context
from verifiers.answers import MathAnswerVerifier

QWEN = BUNDLED["qwen-math"]
R1 = BUNDLED["r1-distill"]
PROMPT = "q\n"

# An R1-style solution, one paragraph a step. The second step is empty (the model wrote the blank line at
# once), the first already reads as an answer to a greedy extractor ("= 7"); the last ends the trace (EOS).
R1_STEPS = (
    "Okay, first 3 + 4 = 7.",
    "",
    "Then 7 * 2 = 14, so the result is 14.",
    "</think>\n\nThe answer is $\\boxed{14}$.",
)


class ParagraphEngine:
    """Writes ``steps`` one per call: the step after as many delimiters as the prompt holds past ``PROMPT``.
    A step stops on the call's stop string, the last with EOS (stop_reason None); a step longer than the
    call's ``max_tokens`` (words are tokens) is cut with ``length``."""

    def __init__(self, steps, *, tokens_per_step=None):
        self.steps, self.calls, self.tokens_per_step = steps, [], tokens_per_step

    async def generate(self, role, spec):
        self.calls.append(spec)
        delimiter = spec.stop[0]
        i = min(spec.prompt[len(PROMPT) :].count(delimiter), len(self.steps) - 1)
        last = i == len(self.steps) - 1
        words = self.steps[i].split(" ") if self.steps[i] else []
        outs = []
        for _ in range(spec.n):
            cut = words[: spec.max_tokens]
            text = " ".join(cut)
            if len(cut) < len(words):
                outs.append(Completion(text, len(cut), "length"))
            else:
                tokens = self.tokens_per_step if self.tokens_per_step is not None else len(cut) + 1
                outs.append(Completion(text, tokens, "stop", stop_reason=None if last else delimiter))
        return Generation(tuple(outs), Usage(len(spec.prompt.split()), sum(c.tokens for c in outs)), worker="scripted-0")

    async def tokenize(self, role, text):
        return text.split()

    async def abort(self, ids):
        pass


def grow_to_the_end(ctx, cfg, limit=50):
    path, steps = Path(), []
    for hop in range(limit):
        (kids,), limited = asyncio.run(extend(ctx, Problem(PROMPT), [(path, 1)], cfg, hop=hop))
        assert not limited
        path = kids[0]
        steps.append(path)
        if path.done:
            return path, steps
    raise AssertionError("the path never ended")


def cfg_for(profile, *, max_tokens=256, step_tokens=64):
    return StepConfig(step_tokens, max_tokens, 0.8, 1.0, None, profile.step_delimiter)


def test_blank_line_steps_end_on_eos_not_on_an_empty_step_nor_on_a_number():
    engine = ParagraphEngine(R1_STEPS)
    # math-verify reads "7" in the first step: that must not end the path.
    ctx, _ = context(engine, profile=R1, verifier=MathAnswerVerifier())
    path, steps = grow_to_the_end(ctx, cfg_for(R1))
    assert len(steps) == len(R1_STEPS)  # not ended by "3 + 4 = 7", not by the empty step
    assert all(not s.done for s in steps[:-1]) and path.done and path.finish_reason == "stop"
    assert all(c.stop == ("\n\n",) for c in engine.calls)
    assert path.text == "\n\n".join(R1_STEPS)  # every delimiter the model wrote, the empty step's included
    assert ctx.extract(steps[0].text) == "7"  # the extractor did see an answer there


def test_boxed_search_answers_from_the_final_part():
    engine = ParagraphEngine(R1_STEPS)
    ctx, _ = context(engine, step_scorer=WordPRM(), profile=R1)
    spec = REGISTRY["beam_search"]
    result = asyncio.run(spec.run(Problem(PROMPT, question="q"), ctx, spec.params(n=4, beam_width=2)))
    assert result.answer == "14" and result.info["finished"] == 4
    assert all(c.answer == "14" and c.finish_reason == "stop" for c in result.candidates)


def test_an_endless_run_of_empty_steps_is_ended_by_max_tokens():
    engine = ParagraphEngine(("",) * 100, tokens_per_step=0)  # a broken engine: empty steps counted as nothing
    ctx, _ = context(engine, profile=QWEN)
    path, steps = grow_to_the_end(ctx, cfg_for(QWEN, max_tokens=5))
    assert len(steps) == 5 and path.tokens == 5
    assert path.finish_reason == "length"  # cut by the search, not ended by the model


def test_a_path_cut_by_its_max_tokens_has_no_answer():
    steps = ("3 + 4 = 7.", "Answer: 7 more words here")
    ctx, _ = context(ParagraphEngine(steps), profile=BUNDLED["bundled"])
    path, _ = grow_to_the_end(ctx, cfg_for(BUNDLED["bundled"], max_tokens=8))
    assert path.finish_reason == "length" and "Answer: 7" in path.text
    spec = REGISTRY["beam_search"]
    ctx, _ = context(ParagraphEngine(steps), step_scorer=WordPRM())
    result = asyncio.run(spec.run(Problem(PROMPT, question="q"), ctx, spec.params(n=2, beam_width=2, max_tokens=8)))
    assert result.candidates and all(c.answer is None for c in result.candidates)


class Fixed:
    """Completions given as (text, finish_reason), in order, for every call."""

    def __init__(self, outs):
        self.outs, self.calls = outs, []

    async def generate(self, role, spec):
        self.calls.append(spec)
        comps = tuple(Completion(t, 5, r) for t, r in self.outs[: spec.n])
        return Generation(comps, Usage(3, 5 * len(comps)), worker="scripted-0")

    async def tokenize(self, role, text):
        return text.split()

    async def abort(self, ids):
        pass


def test_truncated_samples_do_not_vote():
    outs = [("1+1=2\nAnswer: 5", "length")] * 3 + [("1+1=2\nAnswer: 7", "stop")] * 2
    ctx, _ = context(Fixed(outs))
    spec = REGISTRY["self_consistency"]
    result = asyncio.run(spec.run(Problem(PROMPT), ctx, spec.params(n=5)))
    assert result.answer == "7"
    assert [c.answer for c in result.candidates] == [None, None, None, "7", "7"]


def test_first_finish_skips_a_truncated_first_finisher():
    outs = [("Answer: 5", "length")]

    class Two(Fixed):
        async def generate(self, role, spec):
            self.calls.append(spec)
            text, reason = ("Answer: 5", "length") if len(self.calls) == 1 else ("Answer: 7", "stop")
            return Generation((Completion(text, 5, reason),), Usage(3, 5), worker="scripted-0")

    ctx, _ = context(Two(outs))
    spec = REGISTRY["first_finish"]
    result = asyncio.run(spec.run(Problem(PROMPT), ctx, spec.params(n=2, seed=0)))
    assert result.answer == "7"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_max_tokens_default_and_cap_come_from_the_profile(name):
    params = REGISTRY[name].params
    assert params.model_validate({}, context={"profile": R1}).max_tokens == R1.max_tokens
    assert params.model_validate({}, context={"profile": QWEN}).max_tokens == QWEN.max_tokens
    assert params.model_validate({"max_tokens": 20000}, context={"profile": R1}).max_tokens == 20000
    with pytest.raises(ValidationError, match="max_tokens_cap|cap of model profile 'qwen-math'"):
        params.model_validate({"max_tokens": 4097}, context={"profile": QWEN})
    # Without a profile (or with the bundled one) the bounds are the bundled model's, as before.
    assert params().max_tokens == params.model_validate({}, context={"profile": BUNDLED["bundled"]}).max_tokens
    with pytest.raises(ValidationError, match="448"):
        params(max_tokens=449)
    custom = ModelProfile(max_tokens=16, max_tokens_cap=32)
    assert params.model_validate({}, context={"profile": custom}).max_tokens == 16
