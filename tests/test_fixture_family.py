"""The service on the real-architecture fixture family (training/fixture.py), configured as an operator would a
Qwen2.5-Math / DeepSeek-R1 deployment: a workers file (a Qwen2 policy, a Llama-family draft with another
tokenizer, a pooling Qwen2ForProcessRewardModel) and a model profile (``<think>`` reasoning, ``\\boxed{}``
answers, blank-line steps). The weights are random, so the text is noise; what is checked is that every path
an operator's models take works: pooling scores equal transformers', the draft of one family and the target
of another run ATTS, every strategy runs with a ledger that adds up, and bad input is a clear 4xx."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from deploy.calibrate import collect
from orchestrator.errors import TTSError
from orchestrator.types import SamplingSpec
from strategies import atts
from training import fixture
from verifiers import PoolingPRM

pytestmark = pytest.mark.engine

QUESTION = "Start at 37 and apply +48, *3, -59."
SOLUTIONS = [
    "37 + 48 = 85\n\n85 * 3 = 255\n\n255 - 59 = 196\n\nThe answer is \\boxed{196}.",
    "37 + 48 = 86\n\nso the answer is \\boxed{199}.",
    "Let me think.",
]
PROFILE = """name = "fixture-r1"
answer = "boxed"
reasoning = "think"
step_delimiter = "\\n\\n"
max_tokens = 24
max_tokens_cap = 256
"""


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return fixture.build(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="module")
def fixture_service(family, tmp_path_factory):
    """The whole service on the fixture family, from a workers file and a profile file only (eager engines:
    these shapes are compiled nowhere else in the suite, and their speed is beside the point)."""
    from deploy.serve import ServiceThread
    from orchestrator.config import get_settings

    d = tmp_path_factory.mktemp("operator")
    (d / "workers.toml").write_text(
        f'[roles.policy]\nmodel = "{family.policy}"\nmax_model_len = 512\nmax_num_seqs = 16\nenforce_eager = true\n\n'
        f'[roles.draft]\nmodel = "{family.draft}"\nmax_model_len = 512\nmax_num_seqs = 16\nenforce_eager = true\n\n'
        f'[roles.prm]\nmodel = "{family.prm}"\nrunner = "pooling"\nstep_tag = "<extra_0>"\nmax_model_len = 160\nmax_num_seqs = 8\nenforce_eager = true\n\n'
        "[roles.embedder]\n"
    )
    (d / "profile.toml").write_text(PROFILE)
    settings = get_settings(port=0, data_dir=d / "data", workers_file=d / "workers.toml", profile=str(d / "profile.toml"))
    svc = ServiceThread(settings)
    yield svc
    svc.stop()


def reference_scores(prm_dir, prompt: str) -> list[float]:
    """P(class 1) at every `<extra_0>` of ``prompt``: transformers' Qwen2 body, then the score head by hand."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Model

    tok = AutoTokenizer.from_pretrained(prm_dir)
    body = Qwen2Model.from_pretrained(prm_dir, dtype=torch.float32).eval()
    w = load_file(str(prm_dir / "model.safetensors"))
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = body(torch.tensor([ids])).last_hidden_state[0]
        logits = torch.relu(hidden @ w["score.0.weight"].T + w["score.0.bias"]) @ w["score.2.weight"].T + w["score.2.bias"]
        probs = torch.softmax(logits, dim=-1)
    tag = tok.convert_tokens_to_ids("<extra_0>")
    return [float(probs[i, 1]) for i, t in enumerate(ids) if t == tag]


def test_pooling_prm_scores_equal_transformers_reference(fixture_service, family):
    pool = fixture_service.service.pool
    prm = PoolingPRM(pool)
    results = fixture_service.run(prm.score_many(QUESTION, SOLUTIONS))
    assert [len(r.scores) for r in results] == [4, 2, 1]
    for solution, got in zip(SOLUTIONS, results):
        prompt = fixture_service.run(prm.render(QUESTION, got.steps))
        assert prompt.startswith("<|im_start|>system\nPlease reason step by step")
        want = reference_scores(family.prm, prompt)
        assert len(want) == len(got.scores)
        assert got.scores == pytest.approx(want, abs=1e-3), solution
        assert got.usage.prompt_tokens > 0 and got.usage.completion_tokens == 0
    assert len({round(s, 4) for r in results for s in r.scores}) > 3  # the head tells positions apart
    assert fixture_service.run(prm.step_scores(pool, QUESTION, SOLUTIONS[0])).scores == results[0].scores  # as ctx.prm calls it


def test_a_solution_longer_than_the_prm_context_is_scored_by_its_last_steps_that_fit(fixture_service):
    from orchestrator.errors import ContextTooLong
    from verifiers import PoolingPRMFormat

    long = "\n\n".join(f"step {i}: 37 + 48 = 85, then 85 * 3 = 255" for i in range(40))
    pool = fixture_service.service.pool
    out = fixture_service.run(PoolingPRM(pool).score(QUESTION, long))  # the default, [prm] overflow = "last_steps"
    assert out.overflow is not None and (out.overflow.read, out.overflow.steps, out.overflow.limit) == ("last_steps", 40, 160)
    k = out.overflow.steps_scored
    assert 0 < k < 40 and out.steps == tuple(f"step {i}: 37 + 48 = 85, then 85 * 3 = 255" for i in range(40 - k, 40))
    assert len(out.scores) == k and all(0 <= x <= 1 for x in out.scores) and 0 < out.usage.prompt_tokens <= 160
    # One more step would not have fitted: the window is the largest.
    wider = fixture_service.run(PoolingPRM(pool).render(QUESTION, long.split("\n\n")[-(k + 1) :]))
    assert len(fixture_service.run(pool.tokenize("prm", wider))) >= 160
    with pytest.raises(ContextTooLong, match='overflow is "refuse"'):
        fixture_service.run(PoolingPRM(pool, fmt=PoolingPRMFormat(overflow="refuse")).score(QUESTION, long))


def test_a_pooling_engine_refuses_generation_typed(fixture_service):
    with pytest.raises(TTSError):
        fixture_service.run(fixture_service.service.pool.generate("prm", SamplingSpec("hello", max_tokens=4)))


def _ask(svc, strategy: str, params: dict, **extra) -> httpx.Response:
    body = {"model": "target", "messages": [{"role": "user", "content": QUESTION}], "strategy": strategy, "strategy_params": {**params, "seed": 3}, **extra}
    return httpx.post(f"{svc.base_url}/v1/chat/completions", json=body, timeout=600)


def _ledger_adds_up(svc, response: dict) -> None:
    rec = asyncio.run(svc.service.store.requests.get(response["tts"]["request_id"]))
    assert rec.state in ("succeeded", "budget_exhausted")
    assert sum(c.prompt_tokens + c.completion_tokens for c in rec.subcalls if not c.verifier_tokens) == response["usage"]["total_tokens"]
    assert sum(c.verifier_tokens for c in rec.subcalls) == response["tts"]["verifier_tokens"]


def test_atts_runs_a_draft_of_one_family_under_a_target_of_another(fixture_service):
    svc = fixture_service.service
    params = atts.Params(n=1, max_turns=4, chunk_tokens=8, seed=5, update_calibration=False)
    questions = [f"Start at {k} and apply +{k + 3}." for k in range(8)]
    scores = fixture_service.run(collect(svc.pool, questions, params, tools=svc.controller.tools, target_model="target", progress=False))
    fixture_service.run(svc.store.calibration.add_scores(atts.calibration_name("draft", "target", "task"), scores=scores, model="draft->target", keep=4096))
    r = _ask(fixture_service, "atts", {"n": 2, "max_turns": 4, "chunk_tokens": 8})
    assert r.status_code == 200, r.text
    roles = r.json()["tts"]["usage_by_role"]
    assert roles["draft"]["completion_tokens"] > 0 and roles["policy"]["prompt_tokens"] > 0  # both families took part
    _ledger_adds_up(fixture_service, r.json())


EVERY = {
    "single_pass": {},
    "self_consistency": {"n": 2},
    "first_finish": {"n": 2},
    "best_of_n": {"n": 2},
    "beam_search": {"n": 2, "beam_width": 1, "max_steps": 2, "step_tokens": 8},
    "dvts": {"n": 2, "beam_width": 1, "max_steps": 2, "step_tokens": 8},
    "early_rejection": {"n": 2, "beam_width": 1, "max_steps": 2, "step_tokens": 8, "tau": 4},
    "rebase": {"width": 2, "max_depth": 2, "step_tokens": 8},
    "ets": {"width": 2, "max_depth": 2, "step_tokens": 8},
    "pdr": {"schedule": [2, 1]},
    "sequential_refinement": {"rounds": 2},
}


def test_every_strategy_runs_on_the_fixture_with_a_ledger_that_adds_up(fixture_service):
    async def go():
        async with httpx.AsyncClient(base_url=fixture_service.base_url, timeout=600) as c:
            return await asyncio.gather(*(
                c.post("/v1/chat/completions", json={
                    "model": "target", "messages": [{"role": "user", "content": QUESTION}], "strategy": name, "strategy_params": {**p, "seed": 3},
                })
                for name, p in EVERY.items()
            ))

    for name, r in zip(EVERY, asyncio.run(go())):
        assert r.status_code == 200, (name, r.text)
        _ledger_adds_up(fixture_service, r.json())
        calls = asyncio.run(fixture_service.service.store.requests.get(r.json()["tts"]["request_id"])).subcalls
        assert all(c.completion_tokens <= 24 * c.n for c in calls if not c.verifier_tokens), name  # the profile's max_tokens


def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(fixture_service):
    too_long = "word " * 2000
    r = httpx.post(f"{fixture_service.base_url}/v1/chat/completions", json={"model": "target", "messages": [{"role": "user", "content": too_long}]}, timeout=120)
    assert r.status_code == 400 and "max_model_len" in r.json()["error"]["message"], r.text
    [last] = asyncio.run(fixture_service.service.store.requests.recent(None, limit=1))
    assert last.state == "failed" and "max_model_len" in (last.error or "")  # recorded, and not as succeeded
    r = _ask(fixture_service, "single_pass", {})
    assert r.status_code == 200
