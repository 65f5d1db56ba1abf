"""FFS on the real engine: losers are aborted (their tokens stop growing) and the answer comes early."""

from __future__ import annotations

import time

import httpx
import pytest

from models import task

pytestmark = pytest.mark.engine


def _ask(service, strategy: str, question: str, **params) -> tuple[dict, float]:
    body = {"model": "target", "messages": [{"role": "user", "content": question}], "strategy": strategy, "strategy_params": params}
    t0 = time.perf_counter()
    r = httpx.post(service.base_url + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json(), time.perf_counter() - t0


def test_ffs_aborts_losers_and_answers_before_the_slowest_sample(service):
    question = task.generate("test", 1, seed=61, levels=[3])[0].question
    settings = {"n": 8, "seed": 123, "max_tokens": 256, "temperature": 0.6, "top_p": 0.95}
    # The same 8 samples run to completion (self-consistency uses seed + i for sample i, as FFS does).
    full, full_s = _ask(service, "self_consistency", question, **settings)
    ffs, ffs_s = _ask(service, "first_finish", question, **settings)
    info = ffs["tts"]["info"]
    lengths = [c["completion_tokens"] for c in full["tts"]["candidates"]]
    got = {i: c for i, c in enumerate(ffs["tts"]["candidates"])}
    winner = info["winner"]
    assert got[winner]["text"] == full["tts"]["candidates"][winner]["text"]  # seeds reproduce the winner
    assert info["aborted"], "every sample finished together; nothing to abort"
    for i in info["aborted"]:
        # An aborted loser stopped short of where it would have ended: its count stopped growing.
        assert got[i]["finish_reason"] == "abort" and got[i]["completion_tokens"] < lengths[i]
    # The answer arrived before the slowest of the same samples would have finished: it was cut short
    # (shown in tokens, not seconds: timings belong in bench/, this machine is noisy).
    slowest = max(range(8), key=lambda i: lengths[i])
    assert slowest in info["aborted"] or got[slowest]["completion_tokens"] == lengths[slowest] == lengths[winner]
    assert ffs["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]
    record = service.service.store.get_request(ffs["id"])
    assert len(record.subcalls) == 8 and sum(c.completion_tokens for c in record.subcalls) == ffs["usage"]["completion_tokens"]
    print(f"FFS {ffs_s:.2f} s, {ffs['usage']['completion_tokens']} tokens; all 8 samples {full_s:.2f} s, {full['usage']['completion_tokens']} tokens")
