"""The tag PRM's text handling on a scripted engine (characters are tokens): a reasoning model's <think> tags
are not steps. A solution over the PRM's context: test_prm_overflow.py."""

from __future__ import annotations

import asyncio

from orchestrator.types import Scores, Usage
from verifiers import MathShepherdPRM, PRMFormat


class CharEngine:
    """Every character is a token; every row puts log-probability -0.1 on `+` and -2.3 on `-`."""

    def __init__(self) -> None:
        self.prompts: list = []

    async def tokenize(self, role, text):
        return [ord(c) for c in text]

    async def score(self, role, spec):
        self.prompts.append(spec.prompt)
        ids = [ord(c) for c in spec.prompt]
        rows = len(ids) - 1 - spec.start
        return Scores(tuple(ids), spec.start, (-1.0,) * rows, ((-0.1, -2.3),) * rows, Usage(len(ids), 1))


R1 = "<think>\nFirst, 37 + 48 = 85.\n\nThen 85 * 3 = 255.\n</think>\n\nThe answer is \\boxed{255}."
FMT = PRMFormat(step_delimiter="\n\n", hidden=("<think>", "</think>"))


def test_think_tags_are_not_steps_and_every_step_is_scored():
    engine = CharEngine()
    out = asyncio.run(MathShepherdPRM(engine, fmt=FMT).score("q", R1))
    assert out.steps == ("First, 37 + 48 = 85.", "Then 85 * 3 = 255.", "The answer is \\boxed{255}.")
    assert len(out.scores) == 3 and all(s > 0.8 for s in out.scores)
    assert "<think>" not in engine.prompts[0] and "</think>" not in engine.prompts[0]

