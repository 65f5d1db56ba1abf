"""The real path: openai SDK -> HTTP API -> controller -> SQLite -> strategy -> Ray actor -> vLLM -> bundled model."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from sqlalchemy import func, select

from orchestrator.db.models import RequestRecord
from tasks import arithmetic as task

pytestmark = pytest.mark.engine


def _client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.base_url + "/v1", api_key="not-needed", max_retries=0)


def test_sdk_gets_a_correct_answer_with_exact_usage_and_a_ledger(service):
    problems = task.generate("test", 5, seed=11, levels=[1])
    client = _client(service)
    correct = 0
    for p in problems:
        resp = client.chat.completions.create(
            model="target",
            messages=[{"role": "user", "content": p.question}],
            extra_body={"strategy": "self_consistency", "strategy_params": {"n": 16, "seed": 0}},
        )
        correct += task.check_answer(p, resp.choices[0].message.content).correct
        tts = resp.to_dict()["tts"]
        shown = task.extract_answer(resp.choices[0].message.content)
        assert tts["answer"] == (None if shown is None else str(shown))
        assert len(tts["candidates"]) == 16

        # Usage equals what the engine reported, checked independently by re-tokenizing (one token per
        # byte, plus the EOS token that ends every sample finished by "stop").
        expected_completion = sum(len(c["text"].encode()) + (c["finish_reason"] == "stop") for c in tts["candidates"])
        assert resp.usage.completion_tokens == expected_completion
        assert resp.usage.prompt_tokens == len(task.prompt_for(p.question).encode())
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

        record = asyncio.run(service.service.store.requests.get(resp.id))
        assert record is not None and record.state == "succeeded" and record.answer == tts["answer"]
        assert len(record.subcalls) == 1
        call = record.subcalls[0]
        assert (call.n, call.role, call.stage) == (16, "policy", "sample")
        assert call.completion_tokens == resp.usage.completion_tokens
        assert call.prompt_tokens == resp.usage.prompt_tokens
        assert (record.prompt_tokens, record.completion_tokens) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    # The shipped target is weak (see models/target/README.md), so this asks for one correct majority
    # answer among five easy problems: a broken path (wrong prompt, wrong vote) gets none.
    assert correct >= 1, "no majority answer correct"


BAD_BODIES = [
    ("{not json", "not valid JSON", None),
    ({"model": "target", "messages": [{"role": "user", "content": "hi"}], "strategy": "nope"}, "unknown strategy 'nope'", "unknown_strategy"),
    ({"model": "target", "messages": [{"role": "user", "content": "hi"}], "strategy_params": {"n": 0}}, "strategy_params.n", "invalid_request"),
    ({"model": "target", "messages": [{"role": "user", "content": "hi"}], "strategy_params": {"n": 10**9}}, "strategy_params.n", "invalid_request"),
    ({"model": "target", "messages": []}, "messages", "invalid_request"),
    ({"model": "target", "messages": [{"role": "user", "content": "   "}]}, "at least one non-empty message", "invalid_request"),
    ({"model": "target", "messages": [{"role": "user", "content": "hi"}], "n": 5}, "only n=1", "invalid_request"),
    ({"model": "target", "messages": [{"role": "user", "content": "hi"}], "strategy_params": {"bogus": 1}}, "bogus", "invalid_request"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model", "invalid_request"),
]


def _count(service, state=None) -> int:
    with service.service.store.session() as s:
        q = select(func.count()).select_from(RequestRecord)
        return s.scalar(q if state is None else q.where(RequestRecord.state == state))


@pytest.mark.parametrize("body,needle,code", BAD_BODIES, ids=[f"bad{i}" for i in range(len(BAD_BODIES))])
def test_bad_input_is_a_4xx_with_an_openai_error_body_and_records_nothing(service, body, needle, code):
    before = _count(service)
    url = service.base_url + "/v1/chat/completions"
    if isinstance(body, str):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(url, json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    if code:
        assert err["code"] == code
    assert _count(service) == before
    assert httpx.get(service.base_url + "/healthz").json()["status"] == "ok"


def test_unknown_model_is_404_through_the_sdk(service):
    with pytest.raises(openai.NotFoundError, match="not served"):
        _client(service).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])


def test_server_keeps_serving_after_bad_input(service):
    succeeded = _count(service, "succeeded")
    p = task.generate("test", 1, seed=12, levels=[1])[0]
    resp = _client(service).chat.completions.create(
        model="target", messages=[{"role": "user", "content": p.question}], extra_body={"strategy_params": {"n": 4, "seed": 1}}
    )
    assert resp.choices[0].message.content
    assert _count(service, "succeeded") == succeeded + 1
