"""The committed models load in vLLM, write well-formed solutions, and the PRM ranks real errors lower; on the
session's service, which serves all three (draft, target as the policy, prm)."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.types import SamplingSpec
from tasks import arithmetic as task
from verifiers import MathShepherdPRM

ROLE = {"draft": "draft", "target": "policy"}


@pytest.mark.engine
@pytest.mark.parametrize("name", ["draft", "target"])
def test_policy_writes_well_formed_solutions(service, name):
    problems = task.generate("test", 10, seed=5, levels=[1, 2])
    pool = service.service.pool

    async def greedy():
        specs = [SamplingSpec(task.prompt_for(p.question), n=1, max_tokens=256, temperature=0.0) for p in problems]
        return await asyncio.gather(*(pool.generate(ROLE[name], s) for s in specs))

    outs = [g.completions[0] for g in service.run(greedy())]
    for p, c in zip(problems, outs):
        verdicts = task.check_steps(p, c.text)
        assert c.finish_reason == "stop", c.text
        assert verdicts and verdicts[-1].kind == "answer", c.text
        assert all(v.kind != "malformed" for v in verdicts), c.text
    # Far above chance (a model that cannot add gets none of these right), well below what the cards report.
    assert sum(task.check_answer(p, c.text).correct for p, c in zip(problems, outs)) >= 3


@pytest.mark.engine
def test_prm_scores_a_correct_step_above_its_corrupted_copy(service):
    problems = task.generate("test", 8, seed=9, levels=[2, 3])
    items = []
    for p in problems:
        steps = p.solution().split("\n")[:2]
        a, op_b = steps[1].split("=")[0], steps[1].split("=")[1]
        bad = f"{a}={int(op_b) + 10}"
        items += [(p.question, "\n".join(steps)), (p.question, "\n".join([steps[0], bad]))]
    prm = MathShepherdPRM(service.service.pool)
    scores = [r.scores for r in service.run(prm.score_many([q for q, _ in items], [s for _, s in items]))]
    assert all(len(s) == 2 for s in scores)
    pairs = [(scores[i][-1], scores[i + 1][-1]) for i in range(0, len(items), 2)]
    assert sum(good > bad for good, bad in pairs) >= 6, pairs
    assert sum(g for g, _ in pairs) > sum(b for _, b in pairs), pairs
