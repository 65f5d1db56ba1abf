"""A request's own stop strings (OpenAI's ``stop``) end every sample of every strategy, as the profile's do, and
the samples they ended are counted.

Every strategy with its default parameters runs on a scripted engine that records each generation call's spec
and stops a line on the request's string when the line holds it."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.db.store import Store
from orchestrator.types import Completion, Generation, Problem, Scores, StreamDelta, Usage
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine, WordPRM, context
from verifiers import OutcomeJudge, TaskRefiner
from verifiers.embeddings import LexicalClusterer

STOP = "HALT"


class StoppingEngine(StepEngine):
    """:class:`StepEngine` whose third line of every sample would read ``... HALT ...``: a call carrying the
    request's stop string ends it there (``stop_reason`` the string), as an engine honouring ``stop`` does."""

    async def generate(self, role, spec):
        gen = await super().generate(role, spec)
        lines = [ln for ln in spec.prompt.split("\n")[1:] if ln]
        if len(lines) != 2 or STOP not in spec.stop:
            return gen
        outs = tuple(Completion("s2-", 1, "stop", stop_reason=STOP) for _ in gen.completions)
        return Generation(outs, Usage(gen.usage.prompt_tokens, len(outs)), worker=gen.worker)

    async def stream(self, role, spec):
        gen = await self.generate(role, spec)
        for i, c in enumerate(gen.completions):
            yield StreamDelta(i, c.text, c.tokens, c.finish_reason)

    async def score(self, role, spec):
        words = spec.prompt.split() if isinstance(spec.prompt, str) else list(spec.prompt)
        chunk = words[spec.start + 1 :]
        cands = tuple((-0.1,) * len(spec.candidates) for _ in chunk)
        return Scores(tuple(range(len(words))), spec.start, tuple(-0.1 for _ in chunk), cands, Usage(len(words), 1))


@pytest.fixture
def store(tmp_path):
    s = Store.from_url(f"sqlite:///{tmp_path / 'cal.db'}")
    yield s
    s.engine.dispose()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_strategy_sends_the_request_stop_with_every_generation_call(name, store):
    engine = StoppingEngine(depth=4)
    spec = REGISTRY[name]
    asyncio.run(store.calibration.add_scores("d->t/task", scores=[1.0, 1.1, 1.2] * 10, model="d->t", keep=100))
    ctx, calls = context(
        engine, step_scorer=WordPRM(), outcome_scorer=OutcomeJudge(engine), refiner=TaskRefiner(), clusterer=LexicalClusterer(),
        draft_model="d", target_model="t", calibration=store.calibration,
    )
    ctx.stop = (STOP,)
    params = spec.params.model_validate({"seed": 1} if "seed" in spec.params.model_fields else {})
    asyncio.run(spec.run(Problem("q\n", question="q"), ctx, params))
    assert engine.calls, name
    assert all(STOP in s.stop for s in engine.calls), name
    # The string ended samples (every sample reaches a third line here), and they were counted.
    assert ctx.stopped > 0, name
    assert sum(c.n for c in calls if c.kind == "generate") >= ctx.stopped
