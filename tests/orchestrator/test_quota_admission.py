"""A tenant's daily quota at the controller: a remainder too small to do anything is a 429 that leaves no
record; a remainder that cuts the budget is admitted and says so. SQLite and PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from orchestrator.context import prompt_bound
from orchestrator.controller import Controller, ReasoningRequest
from orchestrator.errors import QuotaExceeded
from orchestrator.quota import TenantRef, seconds_to_midnight
from orchestrator.toolbox import Toolbox
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine
from verifiers import TaskAnswerVerifier

PROMPT = "Start at 3 and apply +4.\n"


def _controller(store) -> Controller:
    return Controller(
        engine=StepEngine(depth=1), store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()),
        models={"target": "policy"}, max_request_tokens=10_000,
    )


def _request(n: int = 2) -> ReasoningRequest:
    return ReasoningRequest(model="target", messages=(), prompt=PROMPT, strategy="self_consistency", params={"n": n, "max_tokens": 8})


def _tenant(store, tokens_per_day: int) -> TenantRef:
    tid = asyncio.run(store.tenants.create("t", tokens_per_day=tokens_per_day))
    return TenantRef.of(asyncio.run(store.tenants.get(tid)))


def test_a_remainder_below_the_prompt_and_one_token_is_refused_with_no_record(store):
    least = prompt_bound(PROMPT) + 1
    tenant = _tenant(store, tokens_per_day=1000)
    asyncio.run(store.tenants.reserve_tokens(tenant.id, want=1000 - (least - 1), limit=1000))  # what earlier requests spent today
    with pytest.raises(QuotaExceeded) as err:
        asyncio.run(_controller(store).reason(_request(), tenant=tenant))
    assert err.value.status == 429 and err.value.code == "quota_exceeded"
    assert 0 < err.value.retry_after <= seconds_to_midnight(datetime.now(timezone.utc).date())
    assert f"{least - 1} of its 1000 tokens" in err.value.message
    assert asyncio.run(store.requests.recent(tenant.id)) == []  # no record
    assert asyncio.run(store.tenants.tokens_used(tenant.id)) == 1000 - (least - 1)  # the refused grant was handed back
    assert asyncio.run(store.tenants.enter(tenant.id))  # and its concurrency slot


def test_a_spent_quota_is_refused(store):
    tenant = _tenant(store, tokens_per_day=100)
    asyncio.run(store.tenants.reserve_tokens(tenant.id, want=100, limit=100))
    with pytest.raises(QuotaExceeded, match="has used its 100 tokens"):
        asyncio.run(_controller(store).reason(_request(), tenant=tenant))
    assert asyncio.run(store.requests.recent(tenant.id)) == []


def test_a_small_remainder_is_admitted_and_the_response_says_the_quota_shaped_it(store):
    least = prompt_bound(PROMPT) + 1
    tenant = _tenant(store, tokens_per_day=1000)
    asyncio.run(store.tenants.reserve_tokens(tenant.id, want=1000 - (least + 3), limit=1000))
    out = asyncio.run(_controller(store).reason(_request(), tenant=tenant))
    assert out.quota is not None and out.quota.granted == least + 3 and out.quota.wanted > out.quota.granted
    assert out.quota.tokens_per_day == 1000
    assert out.result.finish_reason == "budget"
    [rec] = asyncio.run(store.requests.recent(tenant.id))
    assert rec.state == "budget_exhausted"
    assert asyncio.run(store.tenants.tokens_used(tenant.id)) <= 1000


def test_a_request_the_quota_covers_says_nothing_about_it(store):
    tenant = _tenant(store, tokens_per_day=100_000)
    out = asyncio.run(_controller(store).reason(_request(), tenant=tenant))
    assert out.quota is None and out.result.finish_reason == "stop"
