"""The strategy context's race and stream stop, against a scripted engine whose calls wait until aborted."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.types import Completion, Generation, SamplingSpec, StreamDelta, Usage
from tests.strategies.scripted import context


class Waiting:
    """Call i (its seed) returns after delays[i] seconds, or at once with half its tokens when aborted."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.aborted: list[str] = []
        self.seen: list[str] = []
        self._stops: dict[str, asyncio.Event] = {}

    async def generate(self, role, spec):
        self.seen.append(spec.request_id)
        stop = self._stops.setdefault(spec.request_id, asyncio.Event())
        try:
            await asyncio.wait_for(stop.wait(), self.delays[spec.seed])
            c = Completion("half", 2, "abort")
        except TimeoutError:
            c = Completion("whole\nAnswer: 1", 4, "stop")
        return Generation((c,), Usage(1, c.tokens))

    async def stream(self, role, spec):
        stop = self._stops.setdefault(spec.request_id, asyncio.Event())
        for i in range(100):
            if stop.is_set():
                yield StreamDelta(0, "", i, "abort")
                return
            yield StreamDelta(0, "x", i + 1)
            await asyncio.sleep(0.01)
        yield StreamDelta(0, "", 100, "length")

    async def tokenize(self, role, text):
        return text.split()

    async def abort(self, ids):
        self.aborted += ids
        for rid in ids:
            self._stops.setdefault(rid, asyncio.Event()).set()


def _specs(n: int) -> list[SamplingSpec]:
    return [SamplingSpec(prompt="q", seed=i) for i in range(n)]


def test_leaving_a_race_aborts_the_running_calls_and_charges_them():
    engine = Waiting([0.05, 5.0, 5.0])
    ctx, calls = context(engine)

    async def go():
        async with ctx.race(_specs(3), stage="sample") as race:
            async for f in race:
                first = f.index
                break
        return race, first

    race, first = asyncio.run(go())
    assert first == 0 and race.aborted == [1, 2] and sorted(race.order) == [0, 1, 2]
    assert len(set(engine.seen)) == 3 and sorted(engine.aborted) == sorted(engine.seen[1:])  # the context's own ids
    assert len(calls) == 3 and ctx.tally.usage.completion_tokens == 4 + 2 + 2  # the aborted calls are in the ledger


def test_a_cancelled_race_aborts_its_engine_calls():
    engine = Waiting([5.0, 5.0])
    ctx, _ = context(engine)

    async def go():
        async def body():
            async with ctx.race(_specs(2), stage="sample") as race:
                async for _ in race:
                    pass

        task = asyncio.create_task(body())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert sorted(engine.aborted) == sorted(engine.seen) and len(engine.seen) == 2


def test_a_stopped_stream_ends_with_abort_and_is_charged():
    engine = Waiting([])
    ctx, calls = context(engine)

    async def go():
        stream = ctx.stream(SamplingSpec(prompt="q", max_tokens=100), stage="sample")
        reasons = []
        async for d in stream:
            if d.tokens == 3 and not d.finish_reason:
                await stream.stop()
            if d.finish_reason:
                reasons.append(d.finish_reason)
        return reasons

    assert asyncio.run(go()) == ["abort"]
    assert len(engine.aborted) == 1 and len(calls) == 1 and calls[0].finish_reasons == ("abort",)
    assert ctx.tally.usage.completion_tokens == 3
