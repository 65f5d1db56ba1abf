"""The PRM scorer, the outcome judge and step embeddings on the real pool (bundled `prm`, `target`, MiniLM)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import ContextTooLong, InvalidRequest
from orchestrator.types import SamplingSpec
from tasks import arithmetic as task
from training.data import simulated_draft
from verifiers.embeddings import StepClusterer, cluster_vectors
from verifiers.prm import JudgeFormat, MathShepherdPRM, OutcomeJudge, PRMFormat, StepScores

pytestmark = pytest.mark.engine
MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def loop(service):
    """The session service's event loop: its pool (policy `target`, eager `prm`, MiniLM) is the one scored here,
    rather than three more engines of this module's own."""
    return service


@pytest.fixture(scope="module")
def pool(service):
    return service.service.pool


@pytest.fixture(scope="module")
def prm(pool):
    return MathShepherdPRM(pool)


def test_engine_scores_equal_transformers(prm, loop):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problem = task.generate("test", 1, seed=31, levels=[3])[0]
    solution = _reference(problem)
    solutions = [solution, solution.replace("=", "=1", 1)]  # and a copy with a wrong first step
    got = loop.run(prm.score_many(problem.question, solutions))

    tok = AutoTokenizer.from_pretrained(MODELS / "prm")
    model = AutoModelForCausalLM.from_pretrained(MODELS / "prm", dtype=torch.float32).eval()
    tag, good, bad = (tok(t, add_special_tokens=True)["input_ids"][-1] for t in (" ки", "+", "-"))
    for s, scores in zip(solutions, got):
        ids = tok(prm.render(problem.question, scores.steps), add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        want = [torch.softmax(logp[p, [good, bad]], dim=-1)[0].item() for p, t in enumerate(ids) if t == tag]
        assert len(want) == len(scores.scores) > 1
        assert max(abs(a - b) for a, b in zip(scores.scores, want)) < 1e-3


def _reference(problem: task.Problem) -> str:
    return simulated_draft(problem, random.Random(0), slip_rate=0.0)


def _auroc(pos: list[float], neg: list[float]) -> float:
    from scipy.stats import mannwhitneyu

    return mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))


def test_step_scores_separate_correct_from_incorrect_steps(pool, prm, loop):
    problems = task.generate("test", 24, seed=77)
    gens = loop.run(
        _gather([pool.generate("policy", SamplingSpec(task.prompt_for(p.question), n=4, max_tokens=200, temperature=0.8, seed=i)) for i, p in enumerate(problems)])
    )
    questions, texts, verdicts = [], [], []
    for p, g in zip(problems, gens):
        for c in g.completions:
            questions.append(p.question)
            texts.append(c.text)
            verdicts.append([v.on_track for v in task.check_steps(p, c.text)])
    scored = loop.run(prm.score_many(questions, texts))
    pos, neg = [], []
    for s, v in zip(scored, verdicts):
        assert len(s.scores) == len(v)
        for score, ok in zip(s.scores, v):
            (pos if ok else neg).append(score)
    assert pos and neg
    auroc = _auroc(pos, neg)
    print(f"PRM step AUROC on {len(pos) + len(neg)} steps of 96 target samples: {auroc:.3f}")
    assert auroc >= 0.75


async def _gather(coros):
    import asyncio

    return await asyncio.gather(*coros)


def test_aggregations_and_partial_steps(prm, loop):
    s = StepScores(("a", "b", "c"), (0.9, 0.5, 0.8), usage=None)  # type: ignore[arg-type]
    assert s.aggregate("last") == 0.8 and s.aggregate("min") == 0.5
    assert math.isclose(s.aggregate("prod"), 0.36) and math.isclose(s.aggregate("mean"), 2.2 / 3)
    with pytest.raises(InvalidRequest, match="unknown aggregation"):
        s.aggregate("median")  # type: ignore[arg-type]
    problem = task.generate("test", 1, seed=32, levels=[3])[0]
    full = _reference(problem)
    partial = full[: len(full) // 2]  # cut mid-step, as after tau tokens
    scores = loop.run(prm.score(problem.question, partial))
    assert len(scores.steps) == len(task.split_steps(partial)) and all(0 <= x <= 1 for x in scores.scores)


def test_bad_input_is_documented_or_a_clear_error(pool, prm, loop):
    empty = loop.run(prm.score("1+1", ""))
    assert empty.steps == () and empty.aggregate() == 0.0
    assert loop.run(prm.score("1+1", "\n\n  \n")).steps == ()
    # Over the PRM's context (512 tokens): its last steps that fit are scored, and the result says so.
    too_long = loop.run(prm.score("1+1", "\n".join(["12+34=46"] * 80)))
    assert too_long.overflow is not None and (too_long.overflow.read, too_long.overflow.steps, too_long.overflow.limit) == ("last_steps", 80, 512)
    k = too_long.overflow.steps_scored
    assert 0 < k < 80 and len(too_long.scores) == k and 0 < too_long.usage.prompt_tokens < 512
    assert len(loop.run(pool.tokenize("prm", prm.render("1+1", ["12+34=46"] * (k + 1))))) >= 512  # the largest window
    with pytest.raises(ContextTooLong, match='overflow is "refuse"'):
        loop.run(MathShepherdPRM(pool, fmt=PRMFormat(overflow="refuse")).score("1+1", "\n".join(["12+34=46"] * 80)))
    with pytest.raises(InvalidRequest, match="step tag"):
        loop.run(prm.score("1+1", "1+1=2 ки\nAnswer: 2"))
    # The worker survived all of it.
    assert loop.run(prm.score("3+4", "3+4=7\nAnswer: 7")).scores


def _slipped(problem: task.Problem) -> str:
    """A solution that goes wrong the way the policies do: a slip in some step, carried to the answer."""
    for seed in range(100):
        text = simulated_draft(problem, random.Random(seed), slip_rate=0.5)
        if not task.check_answer(problem, text).correct:
            return text
    raise AssertionError("no wrong draft in 100 tries")


def test_outcome_judge_reads_p_yes_exactly(pool, loop):
    """The judge's P(yes) equals transformers' next-token probabilities on the same prompt (within 1e-3).

    No trained judge ships: the bundled PRM read at a final tag stands in, and on whole solutions it does
    not tell right from wrong (P(yes) 0.43 vs 0.46 on 12 problems, measured when this test was written), so
    this checks the mechanism, not the bundled model's judgement."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fmt = JudgeFormat(template="{question}\n{solution} ки", yes="+", no="-")
    judge = OutcomeJudge(pool, role="prm", fmt=fmt)
    tok = AutoTokenizer.from_pretrained(MODELS / "prm")
    model = AutoModelForCausalLM.from_pretrained(MODELS / "prm", dtype=torch.float32).eval()
    yes, no = tok("+")["input_ids"][-1], tok("-")["input_ids"][-1]
    for p in task.generate("test", 4, seed=33, levels=[1, 2, 3]):
        for text in (_reference(p), _slipped(p)):
            solution = " ки\n".join(task.split_steps(text))
            got = loop.run(judge.judge(p.question, solution))
            ids = tok(fmt.template.format(question=p.question, solution=solution))["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1]
            want = torch.softmax(logits[[yes, no]].float(), dim=-1)[0].item()
            assert abs(got - want) < 1e-3
    assert loop.run(judge.judge("1+1", "  ")) == 0.0


def test_identical_steps_cluster_together_and_different_ones_apart(pool, loop):
    clusterer = StepClusterer(pool)
    steps = [
        "Multiply 12 by 4 to get 48.",
        "Multiply 12 by 4 to get 48.",
        "12 times 4 equals 48.",
        "The capital of France is Paris.",
        "Subtract 9 from 50, giving 41.",
    ]
    labels = loop.run(clusterer.cluster(steps))
    assert labels[0] == labels[1]
    assert len({labels[0], labels[3], labels[4]}) == 3
    vectors = loop.run(clusterer.embed(steps))
    assert vectors.shape == (5, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert loop.run(clusterer.cluster([])) == []
    assert cluster_vectors(np.eye(3)) == [0, 1, 2] and cluster_vectors(np.ones((2, 4))) == [0, 0]
