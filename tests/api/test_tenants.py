"""Tenants through the real service: keys, a daily quota under 50 concurrent requests and slots on PostgreSQL;
every strategy under a quota on the session's service (SQLite)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select

from orchestrator.db.models import RequestRecord, SubCallRecord
from tasks import arithmetic as task

pytestmark = pytest.mark.engine

QUOTA = 6000


@pytest.fixture(scope="module")
def pg_service(postgres_url, tmp_path_factory):
    from deploy.serve import ServiceThread
    from orchestrator.config import get_settings

    # The policy alone: these tests need keys, quotas and slots on PostgreSQL, not the other engines.
    settings = get_settings(
        port=0, data_dir=tmp_path_factory.mktemp("pgdata"), database_url=postgres_url, require_api_key=True,
        serve_draft=False, serve_prm=False, serve_embedder=False,
    )
    svc = ServiceThread(settings)
    yield svc
    svc.stop()


def _body(i: int) -> dict:
    q = task.generate("test", 1, seed=500 + i, levels=[1])[0].question
    return {"model": "target", "messages": [{"role": "user", "content": q}], "strategy_params": {"n": 2, "max_tokens": 48}}


def test_keys_are_required_when_configured(pg_service):
    r = httpx.post(pg_service.base_url + "/v1/chat/completions", json=_body(0), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_50_concurrent_requests_never_overspend_the_quota(pg_service):
    store = pg_service.service.store
    tenant = asyncio.run(store.tenants.create("acme", tokens_per_day=QUOTA))
    key = asyncio.run(store.tenants.create_api_key(tenant))

    async def go():
        async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=300, headers={"Authorization": f"Bearer {key}"}) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=_body(i)) for i in range(50)))

    responses = asyncio.run(go())
    ok = [r.json() for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded" for r in refused)
    assert ok, "no request got through"
    charged = asyncio.run(store.tenants.tokens_used(tenant))
    returned = sum(d["usage"]["total_tokens"] + d["tts"]["verifier_tokens"] for d in ok)
    with store.session() as s:
        ledger = s.scalar(
            select(func.sum(SubCallRecord.prompt_tokens + SubCallRecord.completion_tokens + SubCallRecord.verifier_tokens))
            .join(RequestRecord, RequestRecord.id == SubCallRecord.request_id)
            .where(RequestRecord.tenant_id == tenant)
        )
    # Bound: 0 with this byte-level tokenizer (reservations are exact upper bounds; see orchestrator/budget.py).
    assert charged <= QUOTA
    assert ledger == returned == charged
    print(f"{len(ok)} served, {len(refused)} refused, {charged}/{QUOTA} tokens charged")


def test_concurrency_slots(pg_service):
    store = pg_service.service.store
    tenant = asyncio.run(store.tenants.create("solo", max_concurrent=1))
    key = asyncio.run(store.tenants.create_api_key(tenant))

    async def go():
        async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=300, headers={"Authorization": f"Bearer {key}"}) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=_body(i)) for i in range(4)))

    codes = sorted(r.status_code for r in asyncio.run(go()))
    assert codes.count(200) >= 1 and set(codes) <= {200, 429}
    assert asyncio.run(store.tenants.enter(tenant))  # every slot was given back
    asyncio.run(store.tenants.leave(tenant))


# Small runs of every strategy, and the stages each must reach even when its cost estimate misses them.
EVERY_STRATEGY = {
    "single_pass": ({"max_tokens": 48}, {"sample"}),
    "self_consistency": ({"n": 2, "max_tokens": 48}, {"sample"}),
    "first_finish": ({"n": 2, "max_tokens": 48}, {"sample"}),
    "best_of_n": ({"n": 2, "max_tokens": 48}, {"sample", "score"}),  # the PRM pass is outside n * max_tokens
    "beam_search": ({"n": 2, "beam_width": 1, "max_steps": 3}, {"expand", "score"}),
    "early_rejection": ({"n": 2, "beam_width": 1, "max_steps": 3}, {"partial", "score"}),
    "rebase": ({"width": 2, "max_depth": 3}, {"expand", "score"}),
    "ets": ({"width": 2, "max_depth": 3}, {"expand", "score"}),
    "pdr": ({"schedule": [2, 1], "max_tokens": 48}, {"round0", "round1"}),
    "sequential_refinement": ({"rounds": 2, "max_tokens": 48}, {"round0", "round1"}),
    "atts": ({"n": 1, "max_turns": 3}, {"draft", "verify"}),  # the target's scoring is outside 2 * n * max_tokens
}


def test_every_strategy_under_a_quota_runs_all_its_stages_and_never_overspends(service):
    store = service.service.store
    tenant = asyncio.run(store.tenants.create("every", tokens_per_day=400_000))
    key = asyncio.run(store.tenants.create_api_key(tenant))
    q = task.generate("test", 1, seed=77, levels=[2])[0].question

    async def go():
        async with httpx.AsyncClient(base_url=service.base_url, timeout=600, headers={"Authorization": f"Bearer {key}"}) as c:
            return await asyncio.gather(*(
                c.post("/v1/chat/completions", json={
                    "model": "target", "messages": [{"role": "user", "content": q}], "strategy": name, "strategy_params": {**params, "seed": 1},
                })
                for name, (params, _) in EVERY_STRATEGY.items()
            ))

    responses = dict(zip(EVERY_STRATEGY, asyncio.run(go())))
    for name, r in responses.items():
        assert r.status_code == 200, (name, r.text)
        tts = r.json()["tts"]
        assert tts["quota"] is None, name  # the quota never cut it
        assert r.json()["choices"][0]["finish_reason"] != "budget", name
        assert EVERY_STRATEGY[name][1] <= set(tts["usage_by_stage"]), (name, sorted(tts["usage_by_stage"]))
    charged = asyncio.run(store.tenants.tokens_used(tenant))
    assert charged == sum(r.json()["usage"]["total_tokens"] + r.json()["tts"]["verifier_tokens"] for r in responses.values())
