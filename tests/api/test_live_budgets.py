"""Live budget metering on the real engine (orchestrator/budget.py, workers/token_pool.py).

The session's service meters live (the default ``TTS_BUDGET_MODE``); the side-by-side check with reservation
mode runs both meters over the service's own worker pool, on the same problems and seeds."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from orchestrator.budget import Budget, BudgetMeter, LengthHistory
from orchestrator.context import StrategyContext
from orchestrator.tally import Tally
from orchestrator.toolbox import Toolbox
from orchestrator.types import Problem, problem_seed
from strategies import REGISTRY
from tasks import arithmetic as task
from verifiers import TaskAnswerVerifier

pytestmark = pytest.mark.engine


async def _run(pool, tools, lengths, name: str, params: dict, budget: int | None, *, live: bool, problems) -> tuple[list, list[list]]:
    results, ledgers = [], []
    for i, p in enumerate(problems):
        calls: list = []

        async def sink(call, calls=calls):
            calls.append(call)

        meter = BudgetMeter(Budget(total_tokens=budget), live=live)
        ctx = StrategyContext(engine=pool, tools=tools, tally=Tally(sink=sink), lengths=lengths, meter=meter)
        spec = REGISTRY[name]
        results.append(await spec.run(Problem(task.prompt_for(p.question)), ctx, spec.params(**params, seed=problem_seed(7, i))))
        ledgers.append(calls)
    return results, ledgers


def test_live_metering_keeps_the_samples_a_worst_case_reservation_truncates(service):
    """Same problems, seeds and budget: a reservation cuts each of 4 samples to a quarter of what is left;
    the live cap lets the samples that fit finish whole, so more of them end with an answer, and first-finish
    search races as many samples as the budget carries instead of one. The meter expects the sample lengths
    it has seen: one unbudgeted pass first, as a running server would have."""
    pool = service.service.pool
    tools = Toolbox(verifier=TaskAnswerVerifier())
    lengths = LengthHistory()  # a running server's: every request's samples add to it
    problems = task.generate("test", 8, seed=123)
    sc = {"n": 4, "max_tokens": 256}
    asyncio.run(_run(pool, tools, lengths, "self_consistency", sc, None, live=True, problems=problems))
    assert lengths.expected("policy", "sample") is not None
    answered, calls = {}, {}
    for live in (False, True):
        res, ledgers = asyncio.run(_run(pool, tools, lengths, "self_consistency", sc, 230, live=live, problems=problems))
        for ledger in ledgers:
            assert sum(c.usage.total_tokens for c in ledger) <= 230
        answered[live] = sum(sum(c.answer is not None for c in r.candidates) for r in res)
        res, ledgers = asyncio.run(_run(pool, tools, lengths, "first_finish", sc, 300, live=live, problems=problems[:4]))
        assert all(sum(c.usage.total_tokens for c in ledger) <= 300 for ledger in ledgers)
        calls[live] = sum(len(ledger) for ledger in ledgers)
    assert answered[True] > answered[False], answered
    # Reserved, the first call's worst case leaves the other three no room: one sample per problem.
    assert calls[False] == 4 < calls[True], calls


STRATEGIES = {
    "single_pass": {},
    "self_consistency": {"n": 4},
    "first_finish": {"n": 4},
    "best_of_n": {"n": 2},
    "beam_search": {"n": 4, "beam_width": 2, "max_steps": 4},
    "early_rejection": {"n": 4, "beam_width": 2, "max_steps": 4},
    "pdr": {"schedule": [2, 1]},
    "sequential_refinement": {"rounds": 2},
}


def test_random_budgets_are_never_exceeded_over_200_requests(service):
    """Random strategies and budgets, eight requests at a time through the HTTP API: for every request, what
    the ledger holds (prompt, completion and verifier tokens of every sub-call) is within its budget."""
    rng = random.Random(2026)
    questions = [p.question for p in task.generate("test", 40, seed=77)]
    store = service.service.store

    async def one(client: httpx.AsyncClient, gate: asyncio.Semaphore, k: int) -> tuple[int, int, str, str]:
        name = rng.choice(sorted(STRATEGIES))
        total = rng.randint(30, 500)
        body = {
            "model": "target",
            "messages": [{"role": "user", "content": rng.choice(questions)}],
            "strategy": name,
            "strategy_params": STRATEGIES[name] | {"seed": k},
            "budget": {"total_tokens": total},
        }
        async with gate:
            r = await client.post("/v1/chat/completions", json=body, timeout=600)
        assert r.status_code == 200, r.text
        record = await store.requests.get(r.json()["id"])
        # A scoring call's row holds its tokens twice (as prompt tokens and as verifier tokens): count them once.
        spent = sum(c.verifier_tokens or c.prompt_tokens + c.completion_tokens for c in record.subcalls)
        assert spent == record.prompt_tokens + record.completion_tokens + record.verifier_tokens
        return spent, total, name, record.state

    async def go() -> list[tuple[int, int, str, str]]:
        gate = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=service.base_url) as client:
            return await asyncio.gather(*(one(client, gate, k) for k in range(200)))

    rows = asyncio.run(go())
    over = [r for r in rows if r[0] > r[1]]
    assert not over, over
    assert {r[3] for r in rows} <= {"succeeded", "budget_exhausted"}
    assert len({r[2] for r in rows}) == len(STRATEGIES)  # every strategy was drawn
