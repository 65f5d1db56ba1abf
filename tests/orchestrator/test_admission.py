"""The run-slot queue, request limits and who may reach the server (no engine needed)."""

from __future__ import annotations

import asyncio

import pytest

from deploy.assembly import exposure
from orchestrator.admission import Admission, Limits
from orchestrator.config import get_settings
from orchestrator.errors import InvalidRequest, Overloaded
from strategies import REGISTRY


def test_admission_runs_max_running_queues_max_queued_and_refuses_the_rest():
    async def go():
        adm = Admission(2, 1)
        release = asyncio.Event()
        order: list[str] = []

        async def job(name: str):
            async with adm.slot():
                order.append(name)
                await release.wait()

        tasks = [asyncio.create_task(job(f"j{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        assert (adm.running, adm.queued) == (2, 1) and order == ["j0", "j1"]
        with pytest.raises(Overloaded) as err:
            async with adm.slot():
                pass
        assert err.value.retry_after >= 1 and err.value.status == 429
        release.set()
        await asyncio.gather(*tasks)
        assert order == ["j0", "j1", "j2"] and (adm.running, adm.queued) == (0, 0)

    asyncio.run(go())


def test_arrivals_racing_through_an_awaiting_admission_step_cannot_overfill_the_queue():
    async def go():
        adm = Admission(1, 1)
        release = asyncio.Event()

        async def record():  # the controller writes the queued record here: other arrivals run meanwhile
            await asyncio.sleep(0.01)

        async def job():
            async with adm.slot(before_wait=record):
                await release.wait()

        tasks = [asyncio.create_task(job()) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert (adm.running, adm.queued) == (1, 1)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r).__name__ for r in results].count("Overloaded") == 2

    asyncio.run(go())


def test_limits_name_the_parameter_and_the_setting():
    limits = Limits(width=8, depth=20, max_tokens=64)
    limits.check(REGISTRY["self_consistency"].params(n=8, max_tokens=64))  # at the limit: fine
    for strategy, params, needle, lim in [
        ("self_consistency", {"n": 9, "max_tokens": 64}, "strategy_params.n: 9 is over this server's limit of 8 (TTS_LIMIT_WIDTH)", limits),
        ("rebase", {"width": 16}, "strategy_params.width", limits),
        ("beam_search", {"step_tokens": 65, "max_tokens": 64, "max_steps": 20}, "strategy_params.step_tokens: 65 .* \\(TTS_LIMIT_MAX_TOKENS\\)", limits),
        ("sequential_refinement", {"rounds": 21, "max_tokens": 64}, "strategy_params.rounds: 21 .* \\(TTS_LIMIT_DEPTH\\)", limits),
        ("pdr", {"schedule": [16, 1], "max_tokens": 64}, "strategy_params.schedule: 16 .* \\(TTS_LIMIT_WIDTH\\)", limits),
        ("pdr", {"schedule": [2, 2, 2, 1]}, "strategy_params.schedule: 4 .* \\(TTS_LIMIT_DEPTH\\)", Limits(depth=3)),
    ]:
        with pytest.raises(InvalidRequest, match=needle if "\\" in needle else needle.replace("(", r"\(").replace(")", r"\)")):
            lim.check(REGISTRY[strategy].params(**params))
    for spec in REGISTRY.values():  # the default limits admit every strategy's defaults
        Limits().check(spec.params())


def test_without_keys_the_server_stays_on_loopback_and_beyond_it_keys_are_required():
    wide = get_settings(host="0.0.0.0")
    assert exposure(wide, has_keys=False).host == "127.0.0.1"
    opened = exposure(wide, has_keys=True)
    assert opened.host == "0.0.0.0" and opened.require_api_key
    local = get_settings(host="127.0.0.1")
    assert exposure(local, has_keys=False) == local and exposure(get_settings(host="::1"), has_keys=False).host == "::1"
