"""Adaptive consistency on the real engine (bundled `target`), over HTTP and through the pool: every wave is one
batched call in the ledger, and the waves draw self-consistency's own samples (the engine seeds sample j of a
call seed + j)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.strategies.test_on_engine import QUESTION, run

pytestmark = pytest.mark.engine


def test_adaptive_consistency_waves_over_http_and_on_the_pool(service):
    body = {"model": "target", "messages": [{"role": "user", "content": QUESTION}], "strategy": "adaptive_consistency"}
    r = httpx.post(service.base_url + "/v1/chat/completions", json={**body, "strategy_params": {"n": 8, "seed": 2}}, timeout=300)
    assert r.status_code == 200, r.text
    waves = [t for t in r.json()["tts"]["trace"] if t.get("stage") == "wave"]
    assert waves and waves[-1]["decision"] != "continue" and waves[-1]["samples"] <= 8
    record = asyncio.run(service.service.store.requests.get(r.json()["id"]))
    assert [c.n for c in record.subcalls] == [w["drawn"] for w in waves]  # one batched engine call per wave

    bad = httpx.post(service.base_url + "/v1/chat/completions", json={**body, "strategy_params": {"confidence": 1.5}}, timeout=60)
    assert bad.status_code == 400 and "confidence" in bad.json()["error"]["message"], bad.text

    # A low target and waves of 2: the answer may come early, but the samples are self-consistency's first ones.
    adaptive, _, calls, _ = run(service, "adaptive_consistency", n=8, wave=2, min_samples=2, confidence=0.6, seed=5)
    full, *_ = run(service, "self_consistency", n=8, seed=5)
    k = adaptive.info["samples"]
    assert [c.text for c in adaptive.candidates] == [c.text for c in full.candidates[:k]]
    assert len(calls) == adaptive.info["waves"]
