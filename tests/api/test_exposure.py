"""What a server with API keys in force shows to whom, and a tenant's nearly spent quota, over HTTP.

The app is the real one (routes, dependencies, error handlers) on a real SQLite ledger; the engine is the
scripted one of the strategy tests, since nothing here depends on what a model writes."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import pytest

from api.app import create_app
from orchestrator.config import get_settings
from orchestrator.context import prompt_bound
from orchestrator.controller import Controller
from orchestrator.db.store import Store
from orchestrator.toolbox import Toolbox
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine
from verifiers import TaskAnswerVerifier

PROMPT = "Start at 3 and apply +4.\n"
METRICS_KEY = "scraper-secret"


def _app(tmp_path, **settings):
    store = Store.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    controller = Controller(
        engine=StepEngine(depth=1), store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()),
        models={"target": "policy"}, max_request_tokens=10_000, budget_mode="reserve",
    )
    return create_app(get_settings(data_dir=tmp_path, **settings), controller), store


def _calls(app, *calls):
    """Run ``(method, path, key, json)`` calls against ``app`` in order; their responses."""

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            out = []
            for method, path, key, body in calls:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                out.append(await c.request(method, path, headers=headers, json=body))
            return out

    return asyncio.run(go())


@pytest.fixture
def keyed(tmp_path):
    app, store = _app(tmp_path, require_api_key=True, metrics_key=METRICS_KEY)
    tenant = asyncio.run(store.tenants.create("acme"))
    return app, store, asyncio.run(store.tenants.create_api_key(tenant))


def test_metrics_need_the_scrapers_key_while_keys_are_in_force(keyed):
    app, _, tenant_key = keyed
    none, tenants, scraper, wrong = _calls(
        app, ("GET", "/metrics", None, None), ("GET", "/metrics", tenant_key, None), ("GET", "/metrics", METRICS_KEY, None),
        ("GET", "/metrics", METRICS_KEY + "x", None),
    )
    assert none.status_code == tenants.status_code == wrong.status_code == 401
    assert none.json()["error"]["code"] == "invalid_api_key" and "TTS_METRICS_KEY" in none.json()["error"]["message"]
    assert scraper.status_code == 200 and "tts_requests_total" in scraper.text


def test_without_a_metrics_key_metrics_stay_closed_while_keys_are_in_force(tmp_path):
    app, _ = _app(tmp_path, require_api_key=True)
    [r] = _calls(app, ("GET", "/metrics", None, None))
    assert r.status_code == 401 and "has no TTS_METRICS_KEY" in r.json()["error"]["message"]


def test_on_loopback_without_keys_metrics_are_open(tmp_path):
    app, _ = _app(tmp_path)
    [r] = _calls(app, ("GET", "/metrics", None, None))
    assert r.status_code == 200


def test_the_dashboard_page_is_open_but_its_data_needs_a_key(keyed):
    app, _, tenant_key = keyed
    page, evals, usage, evals_keyed, usage_keyed = _calls(
        app, ("GET", "/dashboard", None, None), ("GET", "/v1/evals", None, None), ("GET", "/v1/usage", None, None),
        ("GET", "/v1/evals", tenant_key, None), ("GET", "/v1/usage", tenant_key, None),
    )
    assert page.status_code == 200 and 'id="keybox"' in page.text and "Bearer" in page.text  # it asks for a key on a 401
    assert evals.status_code == usage.status_code == 401
    assert evals_keyed.status_code == usage_keyed.status_code == 200


def _completion(n: int = 2) -> dict:
    return {"model": "target", "prompt": PROMPT, "strategy": "self_consistency", "strategy_params": {"n": n, "max_tokens": 8}}


def test_a_quota_that_cannot_cover_the_prompt_and_one_token_is_a_429_with_retry_after_and_no_record(tmp_path):
    app, store = _app(tmp_path, require_api_key=True)
    tenant = asyncio.run(store.tenants.create("low", tokens_per_day=1000))
    key = asyncio.run(store.tenants.create_api_key(tenant))
    asyncio.run(store.tenants.reserve_tokens(tenant, want=1000 - prompt_bound(PROMPT), limit=1000))  # a prompt's worth left, not one token more
    [r] = _calls(app, ("POST", "/v1/completions", key, _completion()))
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
    assert 1 <= int(r.headers["Retry-After"]) <= 86_400
    assert asyncio.run(store.requests.recent(tenant)) == []


def test_a_request_admitted_on_a_small_remainder_says_the_quota_shaped_it(tmp_path):
    app, store = _app(tmp_path, require_api_key=True)
    tenant = asyncio.run(store.tenants.create("low", tokens_per_day=1000))
    key = asyncio.run(store.tenants.create_api_key(tenant))
    asyncio.run(store.tenants.reserve_tokens(tenant, want=1000 - prompt_bound(PROMPT) - 3, limit=1000))
    small, = _calls(app, ("POST", "/v1/completions", key, _completion()))
    assert small.status_code == 200
    quota = small.json()["tts"]["quota"]
    assert quota["granted"] == prompt_bound(PROMPT) + 3 and quota["wanted"] > quota["granted"] and quota["tokens_per_day"] == 1000
    assert small.json()["choices"][0]["finish_reason"] == "budget"  # n=2 samples do not fit: the quota cut it
    asyncio.run(store.tenants.refund_tokens(tenant, tokens=900, day=datetime.now(timezone.utc).date()))
    roomy, = _calls(app, ("POST", "/v1/completions", key, _completion()))
    assert roomy.status_code == 200 and roomy.json()["tts"]["quota"] is None
