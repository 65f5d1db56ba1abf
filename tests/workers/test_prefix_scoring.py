"""Scoring that reads the prefix cache: the same log-probabilities as an uncached score, on the bundled models
(the session's service: its `policy` and `prm` engines), and the CPU engines' small KV blocks."""

from __future__ import annotations

import pytest

from orchestrator.types import SamplingSpec, ScoreSpec
from tasks import arithmetic as task

pytestmark = pytest.mark.engine

TOL = 1e-4


def _solution_ids(svc, role: str, seed: int) -> tuple[int, ...]:
    """A prompt of 44-200 tokens whose prefix the engine serving ``role`` has just computed (so cached)."""
    pool = svc.service.pool
    question = task.generate("dev", 1, seed=seed)[0].question
    prompt = task.prompt_for(question)
    gen = svc.run(pool.generate("policy", SamplingSpec(prompt, max_tokens=160, temperature=0.0)))
    text = prompt + gen.completions[0].text
    ids = tuple(svc.run(pool.tokenize(role, text)))
    if role != "policy":  # put the prefix in this engine's cache too
        svc.run(pool.score(role, ScoreSpec(ids[: len(ids) - 8], start=len(ids) - 10)))
    return ids


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOL or x == y for x, y in zip(a, b))


@pytest.mark.parametrize("role", ["policy", "prm"])
def test_a_tail_score_reads_the_cache_and_agrees_with_an_uncached_one(service, role):
    pool = service.service.pool
    ids = _solution_ids(service, role, seed=31)
    assert 44 <= len(ids) < 128, len(ids)  # room for a tail past one 32-token block; below vLLM-CPU's own 128-token block: any hit is the smaller block's
    start = len(ids) - 12
    cands = (ids[-1], ids[-2])
    whole = service.run(pool.score(role, ScoreSpec(ids, start=0, candidates=cands)))  # start in the first block: uncached
    tail = service.run(pool.score(role, ScoreSpec(ids, start=start, candidates=cands)))
    assert whole.usage.cached_tokens == 0
    assert tail.usage.cached_tokens > 0 and tail.usage.cached_tokens % 32 == 0 and tail.usage.cached_tokens <= start
    assert _close(whole.logprobs[start:], tail.logprobs)
    assert all(_close(a, b) for a, b in zip(whole.candidate_logprobs[start:], tail.candidate_logprobs))
    assert len(tail.logprobs) == len(ids) - 1 - start
    own = service.run(pool.score(role, ScoreSpec(ids, start=start)))  # no candidates: the prompt's own tokens only
    assert _close(own.logprobs, tail.logprobs)


def test_a_cache_hit_past_the_score_start_falls_back_to_an_uncached_score(service):
    pool = service.service.pool
    once = _solution_ids(service, "policy", seed=32)
    ids = once + once  # at least 88 tokens: two full blocks or more
    service.run(pool.score("policy", ScoreSpec(ids, start=0)))  # every full block of `ids` is now cached
    whole = service.run(pool.score("policy", ScoreSpec(ids, start=0)))
    start = 32  # one block in: the cache holds more than that
    got = service.run(pool.score("policy", ScoreSpec(ids, start=start)))
    assert got.usage.cached_tokens == 0  # the rescored, uncached call is the one reported
    assert _close(whole.logprobs[start:], got.logprobs)
