"""The pool's rule for streams whose worker dies: retried once elsewhere before the first part, never after.

Scripted replicas stand in for engines here (what is tested is the pool's dispatch, not generation); the
same pool on real engines is tested in test_pool.py."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.errors import WorkerDied
from orchestrator.types import SamplingSpec, StreamDelta
from workers.pool import WorkerPool


class Scripted:
    """A replica whose stream yields ``parts`` deltas, dying (WorkerDied) before part ``die_at`` if given."""

    def __init__(self, name: str, die_at: int | None = None, parts: int = 3) -> None:
        self.name, self.die_at, self.parts, self.calls = name, die_at, parts, 0

    async def stream(self, spec: SamplingSpec):
        self.calls += 1
        for i in range(self.parts):
            await asyncio.sleep(0)
            if i == self.die_at:
                raise WorkerDied("worker process died mid-stream (ActorDiedError)", worker=self.name)
            yield StreamDelta(0, f"{self.name}:{i} ", i + 1)


def _collect(pool: WorkerPool) -> list[str]:
    async def run() -> list[str]:
        return [d.text async for d in pool.stream("policy", SamplingSpec("Start at 2 and apply +3.\n"))]

    return asyncio.run(run())


def test_stream_whose_worker_dies_before_its_first_part_is_retried_on_the_other_replica():
    dead, alive = Scripted("policy-0", die_at=0), Scripted("policy-1")
    pool = WorkerPool({"policy": [dead, alive]})
    texts = []
    for _ in range(2):  # whichever replica the router picks first, the parts come from the live one
        texts.append("".join(_collect(pool)))
    assert texts == ["policy-1:0 policy-1:1 policy-1:2 "] * 2
    assert dead.calls >= 1 and alive.calls == 2
    assert pool._load == {"policy-0": 0, "policy-1": 0} and not pool._running  # nothing left counted


def test_stream_whose_worker_dies_after_a_part_is_not_retried():
    first, second = Scripted("policy-0", die_at=1), Scripted("policy-1", die_at=1)
    pool = WorkerPool({"policy": [first, second]})
    with pytest.raises(WorkerDied, match="died mid-stream"):
        _collect(pool)
    assert first.calls + second.calls == 1  # a part had been passed on: no second attempt


def test_stream_is_retried_once_only():
    replicas = [Scripted(f"policy-{i}", die_at=0) for i in range(3)]
    pool = WorkerPool({"policy": replicas})
    with pytest.raises(WorkerDied):
        _collect(pool)
    assert sum(r.calls for r in replicas) == 2
