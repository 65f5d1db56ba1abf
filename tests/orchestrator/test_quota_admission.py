"""A tenant's daily quota at the controller: a remainder too small to do anything is a 429 that leaves no
record; a remainder that cuts the budget is admitted and says so. SQLite and PostgreSQL (the ``store`` fixture).

The controllers here reserve each call's worst case (``budget_mode="reserve"``): the scripted engine counts
words as tokens, so under live metering (which counts the prompt exactly) every remainder these tests leave
would fit the whole request and nothing would be shaped. Live metering under a quota is checked on the real
engine in tests/api/test_live_budgets.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from orchestrator.budget import Budget
from orchestrator.context import prompt_bound
from orchestrator.controller import Controller, ReasoningRequest
from orchestrator.errors import QuotaExceeded
from orchestrator.quota import TenantRef, seconds_to_midnight
from orchestrator.strategy import StrategySpec
from orchestrator.toolbox import Toolbox
from orchestrator.types import SamplingSpec, StrategyResult
from strategies.params import Sampling
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine
from verifiers import TaskAnswerVerifier

PROMPT = "Start at 3 and apply +4.\n"


def _controller(store) -> Controller:
    return Controller(
        engine=StepEngine(depth=1), store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()),
        models={"target": "policy"}, max_request_tokens=10_000, budget_mode="reserve",
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


async def _three_calls(problem, ctx, params):
    """A strategy whose cost estimate covers only its first call: later stages (a judge, re-sent prompts)
    are what a worst case tends to miss."""
    texts = []
    for stage in ("draft", "revise", "check"):
        gen = await ctx.generate(SamplingSpec(prompt=problem.prompt + "".join(texts), n=1, max_tokens=8, temperature=0.0), stage=stage)
        texts.append(gen.completions[0].text + "\n")
    return StrategyResult(text=texts[-1], answer=None, finish_reason="budget" if ctx.budget_limited else "stop")


UNDERESTIMATED = StrategySpec(name="three_calls", params=Sampling, run=_three_calls, summary="test", worst_case=lambda p: 8)


def _with(store, spec) -> Controller:
    return Controller(
        engine=StepEngine(depth=1), store=store, strategies={**REGISTRY, spec.name: spec}, tools=Toolbox(verifier=TaskAnswerVerifier()),
        models={"target": "policy"}, max_request_tokens=10_000, budget_mode="reserve",
    )


def test_a_quota_grant_grows_when_later_stages_need_more_than_the_estimate(store):
    tenant = _tenant(store, tokens_per_day=100_000)
    req = ReasoningRequest(model="target", messages=(), prompt=PROMPT, strategy="three_calls", params={})
    out = asyncio.run(_with(store, UNDERESTIMATED).reason(req, tenant=tenant))
    calls = asyncio.run(store.requests.get(out.request_id)).subcalls
    assert [c.stage for c in calls] == ["draft", "revise", "check"]  # no stage skipped
    assert all(c.finish_reasons == ("stop",) for c in calls)  # none cut to fit
    assert out.result.finish_reason == "stop" and out.quota is None
    assert asyncio.run(store.tenants.tokens_used(tenant.id)) == out.usage.total_tokens  # the rest was refunded


def test_a_grown_grant_stops_at_the_quota_and_says_so(store):
    tenant = _tenant(store, tokens_per_day=1000)
    least = prompt_bound(PROMPT) + 1
    # Room for the first call's estimate and a little more, not for all three calls' worst cases.
    asyncio.run(store.tenants.reserve_tokens(tenant.id, want=1000 - (prompt_bound(PROMPT) + 8) - 12, limit=1000))
    req = ReasoningRequest(model="target", messages=(), prompt=PROMPT, strategy="three_calls", params={})
    out = asyncio.run(_with(store, UNDERESTIMATED).reason(req, tenant=tenant))
    assert out.result.finish_reason == "budget" and out.quota is not None and out.quota.granted >= least
    assert asyncio.run(store.tenants.tokens_used(tenant.id)) <= 1000  # never over the day's quota
    [rec] = asyncio.run(store.requests.recent(tenant.id))
    assert rec.state == "budget_exhausted"


def test_a_grant_never_grows_past_the_requests_own_budget(store):
    tenant = _tenant(store, tokens_per_day=100_000)
    budget_tokens = prompt_bound(PROMPT) + 8 + 4
    req = ReasoningRequest(model="target", messages=(), prompt=PROMPT, strategy="three_calls", params={}, budget=Budget(total_tokens=budget_tokens))
    out = asyncio.run(_with(store, UNDERESTIMATED).reason(req, tenant=tenant))
    assert out.result.finish_reason == "budget" and out.quota is None  # the client's limit, not the quota, cut it
    assert out.usage.total_tokens <= budget_tokens


def test_metered_live_a_request_reserves_what_its_strategy_spends_not_its_worst_case(store):
    """After one request, a live controller asks the quota for 1.5x what that strategy spent (never less than
    the prompt and one token); a reserving one asks for the worst case. On a remainder between the two, only
    the reserving one's grant falls short of what it wanted."""
    shaped = {}
    for mode in ("live", "reserve"):
        ctl = Controller(
            engine=StepEngine(depth=1), store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()),
            models={"target": "policy"}, max_request_tokens=10_000, budget_mode=mode,
        )
        first = _tenant(store, tokens_per_day=100_000) if mode == "live" else None
        warm = asyncio.run(ctl.reason(_request(), tenant=first))
        assert warm.result.finish_reason == "stop"
        worst = 2 * 8 + prompt_bound(PROMPT)
        tid = asyncio.run(store.tenants.create(f"small-{mode}", tokens_per_day=1000))
        tenant = TenantRef.of(asyncio.run(store.tenants.get(tid)))
        asyncio.run(store.tenants.reserve_tokens(tenant.id, want=1000 - (worst - 2), limit=1000))
        out = asyncio.run(ctl.reason(_request(), tenant=tenant))
        shaped[mode] = (out.quota is not None, out.result.finish_reason)
    # Reserving, the remainder also cuts the samples' max_tokens; live, the request runs whole.
    assert shaped == {"live": (False, "stop"), "reserve": (True, "budget")}
