"""Pooling reward models: the fixture's Qwen2ForProcessRewardModel served by vLLM's pooling runner in a Ray
actor, scored through the pool by :class:`PoolingPRM`, against transformers' own forward pass; and the remote
``/pooling`` call's request / response mapping against vLLM's own protocol classes."""

from __future__ import annotations

import asyncio

import pytest

from models import fixture
from orchestrator.errors import TTSError
from verifiers import PoolingPRM

QUESTION = "Start at 37 and apply +48, *3, -59."
SOLUTIONS = [
    "37 + 48 = 85\n\n85 * 3 = 255\n\n255 - 59 = 196\n\nThe answer is \\boxed{196}.",
    "37 + 48 = 86\n\nso the answer is \\boxed{199}.",
    "Let me think.",
]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return fixture.build(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="module")
def prm_pool(loop, family, tmp_path_factory):
    """One pooling engine on the fixture PRM, from a workers file as an operator would write it."""
    from workers.config import load_pool_config
    from workers.pool import WorkerPool, connect_ray

    f = tmp_path_factory.mktemp("workers") / "workers.toml"
    f.write_text(
        f'[roles.prm]\nmodel = "{family.prm}"\nrunner = "pooling"\nstep_tag = "<extra_0>"\nmax_model_len = 160\nmax_num_seqs = 8\n'
    )
    connect_ray()
    pool = loop.run(WorkerPool.from_config(load_pool_config(f, env={})), timeout=600)
    yield pool
    loop.run(pool.shutdown(), timeout=120)


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


@pytest.mark.engine
def test_pooling_prm_scores_equal_transformers_reference(loop, prm_pool, family):
    prm = PoolingPRM(prm_pool)
    results = loop.run(prm.score_many(QUESTION, SOLUTIONS))
    assert [len(r.scores) for r in results] == [4, 2, 1]
    for solution, got in zip(SOLUTIONS, results):
        prompt = loop.run(prm.render(QUESTION, got.steps))
        assert prompt.startswith("<|im_start|>system\nPlease reason step by step")
        want = reference_scores(family.prm, prompt)
        assert len(want) == len(got.scores)
        assert got.scores == pytest.approx(want, abs=1e-3), solution
        assert got.usage.prompt_tokens > 0 and got.usage.completion_tokens == 0
    assert len({round(s, 4) for r in results for s in r.scores}) > 3  # the head tells positions apart
    # Through the StepScorer protocol, as ctx.prm calls it.
    assert loop.run(prm.step_scores(prm_pool, QUESTION, SOLUTIONS[0])) == results[0].scores


@pytest.mark.engine
def test_a_solution_longer_than_the_prm_context_scores_zero_instead_of_failing(loop, prm_pool, caplog):
    long = "\n\n".join(f"step {i}: 37 + 48 = 85, then 85 * 3 = 255" for i in range(40))
    with caplog.at_level("INFO", logger="verifiers.pooling_prm"):
        out = loop.run(PoolingPRM(prm_pool).score(QUESTION, long))
    assert out.scores == (0.0,) * 40
    assert any("longer than the PRM's context" in r.getMessage() and "max_model_len 160" in r.getMessage() for r in caplog.records)


@pytest.mark.engine
def test_a_pooling_engine_refuses_generation_typed(loop, prm_pool):
    from orchestrator.types import SamplingSpec

    with pytest.raises(TTSError):
        loop.run(prm_pool.generate("prm", SamplingSpec("hello", max_tokens=4)))


# ---------------------------------------------------------------------------------------------- remote, no server


def test_remote_pooling_request_and_response_match_vllms_protocol():
    """The body RemoteEngine sends is a valid vLLM PoolingCompletionRequest for token classification, and a
    PoolingResponse vLLM would send maps to one row per step tag."""
    import httpx
    from vllm.entrypoints.pooling.pooling.protocol import PoolingCompletionRequest, PoolingResponse, PoolingResponseData
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    from orchestrator.types import ScoreSpec
    from workers.remote import RemoteEngine

    sent: list[dict] = []
    rows = [[0.3, 0.7], [0.9, 0.1]]

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content)
        sent.append(body)
        assert request.url.path == "/pooling"
        parsed = PoolingCompletionRequest.model_validate(body)
        assert parsed.task == "token_classify" and parsed.input == [5, 9, 7, 9]
        resp = PoolingResponse(
            model=body["model"],
            data=[PoolingResponseData(index=0, data=rows)],
            usage=UsageInfo(prompt_tokens=4, total_tokens=4),
        )
        return httpx.Response(200, json=resp.model_dump())

    async def run():
        engine = RemoteEngine("http://prm.test", model="prm", name="prm-0")
        engine._client = httpx.AsyncClient(base_url="http://prm.test", transport=httpx.MockTransport(handler))
        try:
            return await engine.classify_tokens(ScoreSpec((5, 9, 7, 9)))
        finally:
            await engine.shutdown()

    out = asyncio.run(run())
    assert out.token_ids == (5, 9, 7, 9) and out.rows == ((0.3, 0.7), (0.9, 0.1)) and out.worker == "prm-0"
    assert out.usage.prompt_tokens == 4 and out.usage.completion_tokens == 0
    assert sent[0]["model"] == "prm"
