"""The service on the v2 bundled family (models/v2: a Qwen2 target and draft sharing a byte-level BPE, a
``Qwen2ForProcessRewardModel``), trained by the recipe at smoke size in this session and served from a
workers file and the family's own profile (``models/v2/profile.toml``) only: ``<think>`` reasoning back as
``reasoning_content``, ``\\boxed{}`` answers extracted and voted by expression, the pooling PRM scoring steps
as transformers does, every strategy with a ledger that adds up, and a Countdown evaluation graded by the
task's exact checker. Smoke models are barely trained: what is checked is that every path works."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orchestrator.profile import load_profile
from strategies import atts
from tasks import countdown
from tests.test_fixture_family import EVERY, _ledger_adds_up
from training import countdown_traces
from training.v2 import formats, measure
from verifiers import CountdownVerifier, PoolingPRM, verifier_for

pytestmark = pytest.mark.engine

PROFILE = Path(__file__).resolve().parents[1] / "models" / "v2" / "profile.toml"
# Level-1 test problems: the smoke target answers them more often than harder ones.
PROBLEMS = countdown.generate("test", 4, seed=5, levels=[1])


@pytest.fixture(scope="module")
def v2_service(v2_family, tmp_path_factory):
    from deploy.serve import ServiceThread
    from orchestrator.config import get_settings

    d = tmp_path_factory.mktemp("v2operator")
    (d / "workers.toml").write_text(
        f'[roles.policy]\nmodel = "{v2_family / "target"}"\nmax_model_len = 1024\nmax_num_seqs = 32\nenforce_eager = true\n\n'
        f'[roles.draft]\nmodel = "{v2_family / "draft"}"\nmax_model_len = 1024\nmax_num_seqs = 32\nenforce_eager = true\n\n'
        f'[roles.prm]\nmodel = "{v2_family / "prm"}"\nrunner = "pooling"\nstep_tag = "<extra_0>"\nmax_model_len = 1024\nmax_num_seqs = 16\nenforce_eager = true\n'
    )
    settings = get_settings(
        port=0, data_dir=d / "data", workers_file=d / "workers.toml", profile=str(PROFILE), refiner="countdown", clusterer="lexical"
    )
    svc = ServiceThread(settings)
    yield svc
    svc.stop()


def _messages(problem: countdown.Problem) -> list[dict[str, str]]:
    return [{"role": "system", "content": formats.SYSTEM}, {"role": "user", "content": countdown.prompt_for(problem.question)}]


def test_the_openai_sdk_gets_reasoning_and_a_boxed_answer_voted_by_expression(v2_service):
    from openai import OpenAI

    client = OpenAI(base_url=f"{v2_service.base_url}/v1", api_key="unused")
    verifier = verifier_for(load_profile(PROFILE))
    answered = 0
    for i, problem in enumerate(PROBLEMS):
        r = client.chat.completions.create(
            model="target", messages=_messages(problem), max_tokens=160,
            extra_body={"strategy": "self_consistency", "strategy_params": {"n": 4, "seed": i}},
        )
        message, tts = r.choices[0].message, r.model_extra["tts"]
        reasoning = message.model_extra.get("reasoning_content")
        text = f"<think>\n{reasoning}\n</think>\n\n{message.content}" if reasoning is not None else message.content
        # The trace's candidates are keyed as the profile says: by expression, never by the value they claim;
        # each shows its answer as the model wrote it.
        for c in tts["candidates"]:
            if c["finish_reason"] == "stop":  # a cut sample never counts as answered
                assert c["answer_key"] == verifier.extract(c["text"])
                assert c["answer"] == (verifier.written(c["text"]) if c["answer_key"] is not None else None)
        if tts["answer"] is not None:
            answered += 1
            assert reasoning and "\\boxed{" in message.content and "<think>" not in message.content
            assert tts["answer_key"] == CountdownVerifier.key(countdown.extract_answer(text))
    assert answered, "no request of 4 x 4 samples ended with a boxed answer"


def test_the_pooling_prm_scores_steps_as_transformers_does(v2_service, v2_family):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    problem = PROBLEMS[0]
    solutions = [countdown_traces.optimal_trace(problem), countdown_traces.solve_trace(problem, __import__("random").Random(1))]
    prm = v2_service.service.controller.tools.step_scorer  # as the server built it from the profile
    assert isinstance(prm, PoolingPRM)
    results = v2_service.run(prm.score_many(problem.question, solutions))
    tok = AutoTokenizer.from_pretrained(v2_family / "prm")
    model = AutoModelForTokenClassification.from_pretrained(v2_family / "prm", trust_remote_code=True).eval()
    tag = tok.convert_tokens_to_ids("<extra_0>")
    for solution, got in zip(solutions, results):
        # The service cuts the same steps the recipe trained the PRM on (the think tags are not steps).
        assert list(got.steps) == list(formats.prm_example(problem, solution).steps)
        prompt = v2_service.run(prm.render(problem.question, got.steps))
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0], dim=-1)
        want = [float(probs[i, 1]) for i, t in enumerate(ids) if t == tag]
        assert got.scores == pytest.approx(want, abs=1e-3)


def test_every_strategy_runs_on_the_family_with_a_ledger_that_adds_up(v2_service):
    import httpx

    from deploy.calibrate import collect

    svc = v2_service.service
    params = atts.Params(n=1, max_turns=4, chunk_tokens=16, seed=5, update_calibration=False)
    questions = [p.question for p in countdown.generate("dev", 8, seed=1, levels=[1, 2])]
    scores = v2_service.run(collect(svc.pool, questions, params, tools=svc.controller.tools, target_model="target", progress=False))
    v2_service.run(svc.store.calibration.add_scores(atts.calibration_name("draft", "target", "task"), scores=scores, model="draft->target", keep=4096))
    every = {**EVERY, "atts": {"n": 2, "max_turns": 4, "chunk_tokens": 16}}
    problem = PROBLEMS[1]

    async def go():
        async with httpx.AsyncClient(base_url=v2_service.base_url, timeout=600) as c:
            return await asyncio.gather(*(
                c.post("/v1/chat/completions", json={
                    "model": "target", "messages": _messages(problem), "max_tokens": 96, "strategy": name, "strategy_params": {**p, "seed": 3},
                })
                for name, p in every.items()
            ))

    responses = dict(zip(every, asyncio.run(go())))
    for name, r in responses.items():
        assert r.status_code == 200, (name, r.text)
        _ledger_adds_up(v2_service, r.json())
    # The PRM-guided ones scored steps on the pooling PRM, charged as verifier tokens.
    for name in ("best_of_n", "beam_search", "dvts", "early_rejection", "rebase", "ets"):
        assert responses[name].json()["tts"]["verifier_tokens"] > 0, name


def test_a_countdown_grid_is_graded_by_the_tasks_exact_checker(v2_service, v2_family):
    from deploy.evaluate import load_dataset
    from orchestrator.evals import Cell, evaluate
    from verifiers import ServedGrading

    svc = v2_service.service
    dataset = load_dataset("countdown:test", problems=5)
    [summary] = v2_service.run(evaluate(
        svc.controller, svc.store, dataset, [Cell("self_consistency", {"n": 2, "max_tokens": 128, "seed": 0})],
        model="target", name="v2-smoke", grader=ServedGrading(svc.controller.tools.profile, dataset.verifier), concurrency=5,
    ))
    assert summary.problems == 5
    [run] = [r for r in v2_service.run(svc.store.evals.runs(name="v2-smoke")) if r.id == summary.run_id]
    questions = {it.id: it.question for it in dataset.items}
    for row in run.results:
        rec = v2_service.run(svc.store.requests.get(row.request_id))
        # Graded as the service answered: a result it gave no answer (its sample was cut) is wrong whatever its text.
        answered = rec.answer is not None and rec.finish_reason != "length"
        assert row.correct == (answered and countdown.check_answer(countdown.parse_question(questions[row.problem_id]), rec.text or "").correct)
    # The recipe's evaluate stage measured the same family and wrote a row for every goal.
    metrics = json.loads((v2_family / "metrics.json").read_text())
    assert len(metrics["goals"]) == len(measure.GOALS) and metrics["settings"]["split"] == "test"


def test_the_benchmarks_run_on_the_family_with_its_task_and_profile(v2_service, v2_family, tmp_path):
    """bench.strategies and bench.atts on the v2 family (``--family v2 --models <recipe out>``), on the served
    pool and toolbox: Countdown problems through the chat template, graded by the task's checker, FLOPs from
    the family's own training records, ATTS calibrated under the family's name with its blank-line steps."""
    import argparse
    import dataclasses

    from bench import atts as bench_atts
    from bench import strategies as bench_strategies
    from bench.family import FAMILIES, Served

    svc = v2_service.service
    fam = dataclasses.replace(FAMILIES["v2"], models=v2_family)
    served = Served(fam, svc.pool, svc.controller.tools)
    args = argparse.Namespace(problems=5, concurrency=5, ns=[2], seed=0, seeds=[0, 1], only=["self_consistency", "first_finish", "best_of_n"])
    report = v2_service.run(bench_strategies.run_rows(served, args))
    rows = {r["strategy"]: r for r in report["rows"]}
    assert report["settings"]["family"] == "v2" and set(rows) == set(args.only)
    for r in rows.values():
        # --problems 5 spread evenly over the task's levels, under each of two seeds.
        assert r["problems"] == 2 * len(bench_strategies.problems_of(fam, args)) > 0
        assert set(r["by_seed"]) == {"0", "1"} and r["mean_gflops"] > 0
    # The PRM's tokens count in best-of-N's total, as the ledger's verifier tokens do.
    assert rows["best_of_n"]["mean_total_tokens"] > rows["self_consistency"]["mean_total_tokens"]
    assert "ffs_vs_majority@2" in report["goals"]

    atts_args = argparse.Namespace(
        problems=2, calibration_problems=6, n=2, max_turns=4, alphas=[0.3], modes=["line"], resamples=0, concurrency=2, seed=0,
        out=tmp_path / "atts.json", family="v2", models=v2_family,
    )
    # A set of at least atts.MIN_CALIBRATION scores: 6 questions x 2 samples x up to 4 chunks.
    report = v2_service.run(bench_atts.measure(served, svc.store, atts_args))
    assert report["calibration"]["line"]["name"] == atts.calibration_name("draft", "target", "countdown")
    assert report["calibration"]["line"]["scores"] > 0
    [row] = [r for r in report["rows"] if r["strategy"] == "atts"]
    assert row["problems"] == 2 and row["chunks"] > 0 and row["params"]["dataset"] == "countdown"
    assert report["decode_tokens_per_s"]["draft"] > 0
    json.dumps(report)  # the report is written as JSON
