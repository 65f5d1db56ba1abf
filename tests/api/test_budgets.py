"""Budgets on the real path: a 300-token request stays within 300 tokens in the ledger and says `budget`."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tasks import arithmetic as task

pytestmark = pytest.mark.engine


def _post(service, **body) -> httpx.Response:
    base = {"model": "target", "messages": [{"role": "user", "content": task.generate("test", 1, seed=41)[0].question}]}
    return httpx.post(service.base_url + "/v1/chat/completions", json=base | body, timeout=300)


def test_300_token_budget_is_never_overspent_and_says_when_it_shaped_the_answer(service):
    """Metered live (the default): 8 samples of up to 256 tokens share 300. Whether the budget ended one depends
    on how long this draw's samples are; the answer says `budget` exactly when it did."""
    r = _post(service, strategy_params={"n": 8, "max_tokens": 256}, budget={"total_tokens": 300})
    assert r.status_code == 200, r.text
    data = r.json()
    record = asyncio.run(service.service.store.requests.get(data["id"]))
    ledger = sum(c.prompt_tokens + c.completion_tokens + c.verifier_tokens for c in record.subcalls)
    assert ledger <= 300  # the engine delivers no more than the call's cap (see orchestrator/budget.py)
    assert ledger == data["usage"]["total_tokens"] + data["tts"]["verifier_tokens"]
    assert record.budget == {"total_tokens": 300}
    # Every sample is voted on, the ones the budget ended (finish reason length) included.
    candidates = data["tts"]["candidates"]
    assert len(candidates) == 8
    cut = any(c["finish_reason"] == "length" for c in candidates)
    assert (data["choices"][0]["finish_reason"] == "budget") == cut
    assert (record.state == "budget_exhausted") == cut


def test_a_budget_too_small_for_any_call_returns_an_empty_budget_answer(service):
    r = _post(service, budget={"total_tokens": 20})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["choices"][0]["finish_reason"] == "budget" and data["tts"]["answer"] is None
    assert data["usage"]["total_tokens"] == 0
    assert asyncio.run(service.service.store.requests.get(data["id"])).state == "budget_exhausted"


@pytest.mark.parametrize(
    "budget, needle",
    [
        ({"total_tokens": 0}, "budget.total_tokens"),
        ({"total_tokens": -3}, "budget.total_tokens"),
        ({"deadline_s": 0}, "budget.deadline_s"),
        ({"tokens": 100}, "budget.tokens"),
        ({"cost_usd": 0.01}, "needs a price"),
    ],
)
def test_bad_budgets_are_clear_400s(service, budget, needle):
    r = _post(service, budget=budget)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"] + str(r.json()["error"].get("param"))


def test_auto_picks_by_budget_from_stored_results(service):
    store = service.service.store
    results = lambda correct, tokens: [  # noqa: E731
        {"problem_id": f"p{i}", "correct": i < correct, "total_tokens": tokens, "latency_s": 0.1} for i in range(10)
    ]
    asyncio.run(store.evals.add_run(dataset="task-test", model="target", strategy="self_consistency", params={"n": 2, "max_tokens": 64}, results=results(4, 200)))
    asyncio.run(store.evals.add_run(dataset="task-test", model="target", strategy="self_consistency", params={"n": 12, "max_tokens": 64}, results=results(7, 1100)))
    asyncio.run(store.evals.add_run(dataset="task-test", model="target", strategy="no_such_strategy", params={}, results=results(10, 10)))
    picks = {}
    for total in (300, 5000):
        r = _post(service, strategy="auto", budget={"total_tokens": total})
        assert r.status_code == 200, r.text
        picks[total] = r.json()["tts"]["info"]["auto"]
        assert len(r.json()["tts"]["candidates"]) == picks[total]["params"]["n"]
    assert picks[300]["params"] == {"n": 2, "max_tokens": 64} and picks[5000]["params"] == {"n": 12, "max_tokens": 64}
    r = _post(service, strategy="auto", strategy_params={"n": 3})
    assert r.status_code == 400 and "auto" in r.json()["error"]["message"]
