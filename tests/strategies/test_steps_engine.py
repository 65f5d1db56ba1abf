"""Step ends and truncation on the real engine (the session's bundled `target`, bundled profile): what a
step search reads from vLLM's finish and stop reasons."""

from __future__ import annotations

import pytest

from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import StrategyContext
from orchestrator.tally import Tally
from orchestrator.profile import BUNDLED
from orchestrator.toolbox import Toolbox
from orchestrator.types import Problem
from strategies import REGISTRY
from strategies.common import Path, StepConfig, extend
from tasks import arithmetic as task
from verifiers.answers import verifier_for

pytestmark = pytest.mark.engine
PROFILE = BUNDLED["bundled"]
QUESTION = task.generate("test", 1, seed=5, levels=[3])[0].question


def test_steps_stop_on_the_delimiter_and_the_path_ends_on_eos_with_its_answer(service):
    async def sink(call):
        pass

    ctx = StrategyContext(engine=service.service.pool, tools=Toolbox(verifier=verifier_for(PROFILE), profile=PROFILE), tally=Tally(sink=sink), meter=BudgetMeter(Budget()))
    problem = Problem(task.prompt_for(QUESTION), question=QUESTION)
    cfg = StepConfig(64, 256, 0.0, 1.0, 0, PROFILE.step_delimiter)
    path, steps = Path(), []
    while not path.done and len(steps) < 20:
        (kids,), _ = service.run(extend(ctx, problem, [(path, 1)], cfg, hop=len(steps)))
        path = kids[0]
        steps.append(path)
    assert path.done and path.finish_reason == "stop" and len(steps) >= 3  # one step per line, then EOS
    assert all(s.text.endswith("\n") for s in steps[:-1])  # every open step stopped on "\n"
    assert ctx.extract(path.text) is not None and task.ANSWER_PREFIX in path.last_step()

    # The same greedy solution cut two tokens short (its EOS and its answer's last digit): a truncated sample
    # is never answered, though what it holds still reads as one.
    spec = REGISTRY["self_consistency"]
    cut = service.run(spec.run(problem, ctx, spec.params(n=1, max_tokens=path.tokens - 2, temperature=0.0, seed=0)))
    (c,) = cut.candidates
    assert c.finish_reason == "length" and task.ANSWER_PREFIX in c.text and c.answer is None and cut.answer is None
