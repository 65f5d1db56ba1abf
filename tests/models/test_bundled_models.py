"""The committed models load in vLLM, write well-formed solutions, and the PRM ranks real errors lower."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import measure
from models.train import prm_text
from tasks import arithmetic as task

pytestmark = pytest.mark.engine
MODELS = Path(measure.__file__).resolve().parent


@pytest.fixture(scope="module")
def engines():
    out = {name: measure.engine(MODELS / name, seed=0) for name in ("draft", "target", "prm")}
    yield out
    for llm in out.values():
        llm.llm_engine.engine_core.shutdown()


@pytest.mark.parametrize("name", ["draft", "target"])
def test_policy_writes_well_formed_solutions(engines, name):
    problems = task.generate("test", 10, seed=5, levels=[1, 2])
    groups = measure.sample(engines[name], [task.prompt_for(p.question) for p in problems], n=1, temperature=0.0)
    for p, (s,) in zip(problems, groups):
        verdicts = task.check_steps(p, s.text)
        assert s.finish == "stop", s.text
        assert verdicts and verdicts[-1].kind == "answer", s.text
        assert all(v.kind != "malformed" for v in verdicts), s.text
    # Far above chance (a model that cannot add gets none of these right), well below what the cards report.
    assert sum(task.check_answer(p, g[0].text).correct for p, g in zip(problems, groups)) >= 3


def test_prm_scores_a_correct_step_above_its_corrupted_copy(engines):
    problems = task.generate("test", 8, seed=9, levels=[2, 3])
    items = []
    for p in problems:
        steps = p.solution().split("\n")[:2]
        a, op_b = steps[1].split("=")[0], steps[1].split("=")[1]
        bad = f"{a}={int(op_b) + 10}"
        items += [(p.question, steps), (p.question, [steps[0], bad])]
    scores = measure.prm_step_scores(engines["prm"], items)
    assert all(len(s) == 2 for s in scores)
    pairs = [(scores[i][-1], scores[i + 1][-1]) for i in range(0, len(items), 2)]
    assert sum(good > bad for good, bad in pairs) >= 6, pairs
    assert sum(g for g, _ in pairs) > sum(b for _, b in pairs), pairs


def test_prm_text_places_one_tag_per_step():
    assert prm_text("Q.", ["1+1=2", "Answer: 2"]) == "Q.\n1+1=2 ки\nAnswer: 2 ки\n"
