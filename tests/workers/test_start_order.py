"""The pool serves once its first roles are ready and loads the others behind them: their calls are refused,
typed, while they load (with a wait) or after they failed (without one). Backends here are in-process fakes
whose start the test releases, so every ordering claim is an assertion on what started when."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from orchestrator.errors import EngineError, EngineLoading, EngineUnavailable, WorkerDied
from orchestrator.types import Completion, Generation, Role, SamplingSpec, Usage
from workers.backend import Unsupported
from workers.pool import WorkerPool


@dataclass
class Gate:
    """What the fake backends of one test share: the order starts began in, and one event per replica that
    lets its start finish (or fail)."""

    began: list[str] = field(default_factory=list)
    release: dict[str, asyncio.Event] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)
    die_once: set[str] = field(default_factory=set)
    stopped: list[str] = field(default_factory=list)


class GatedBackend(Unsupported):
    def __init__(self, name: str, gate: Gate) -> None:
        self.name = name
        self.gate = gate
        self.calls = 0
        gate.release[name] = asyncio.Event()

    async def start(self) -> None:
        self.gate.began.append(self.name)
        await self.gate.release[self.name].wait()
        if self.name in self.gate.fail:
            raise EngineError("out of memory while loading", worker=self.name)

    async def generate(self, spec: SamplingSpec) -> Generation:
        self.calls += 1
        if self.name in self.gate.die_once:
            self.gate.die_once.discard(self.name)
            raise WorkerDied("died mid-call", worker=self.name)
        return Generation((Completion("ok", 1, "stop"),), Usage(prompt_tokens=1, completion_tokens=1), worker=self.name)

    async def shutdown(self) -> None:
        self.gate.stopped.append(self.name)


@dataclass(frozen=True)
class GatedSpec:
    role: Role
    gate: Gate
    replicas: int = 1
    start_one_by_one: bool = False

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> GatedBackend:
        return GatedBackend(name, self.gate)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _spec() -> SamplingSpec:
    return SamplingSpec(prompt="q", max_tokens=4)


def test_serves_once_the_policy_is_ready_and_loads_the_rest_after_it():
    async def go() -> None:
        gate = Gate()
        specs = [GatedSpec("policy", gate), GatedSpec("prm", gate), GatedSpec("draft", gate)]
        starting = asyncio.ensure_future(WorkerPool.start(specs, first={"policy"}, rest="after"))
        await _settle()
        assert gate.began == ["policy-0"]  # alone: the others wait for it (shared cores)
        gate.release["policy-0"].set()
        pool = await asyncio.wait_for(starting, 5)  # returned with prm and draft still loading
        await _settle()
        assert sorted(gate.began) == ["draft-0", "policy-0", "prm-0"]
        assert {e.name: e.state for e in pool.status()} == {"policy-0": "ready", "prm-0": "loading", "draft-0": "loading"}
        assert pool.role_state("policy") == "ready" and pool.role_state("prm") == "loading" and pool.role_state("judge") is None
        assert (await pool.generate("policy", _spec())).worker == "policy-0"

        with pytest.raises(EngineLoading) as err:
            await pool.generate("draft", _spec())
        assert err.value.status == 503 and err.value.retry_after is not None and err.value.retry_after >= 5
        assert "still loading" in err.value.message

        gate.release["draft-0"].set()
        await _settle()
        assert pool.role_state("draft") == "ready"
        assert (await pool.generate("draft", _spec())).worker == "draft-0"
        gate.release["prm-0"].set()
        await _settle()
        assert all(e.state == "ready" for e in pool.status())
        await pool.shutdown()

    asyncio.run(go())


def test_together_starts_every_role_at_once_but_waits_for_the_first_only():
    async def go() -> None:
        gate = Gate()
        starting = asyncio.ensure_future(WorkerPool.start([GatedSpec("policy", gate), GatedSpec("embedder", gate)], first={"policy"}, rest="together"))
        await _settle()
        assert sorted(gate.began) == ["embedder-0", "policy-0"]
        gate.release["policy-0"].set()
        pool = await asyncio.wait_for(starting, 5)
        assert pool.role_state("embedder") == "loading"
        await pool.shutdown()  # while the embedder still loads: its start is cancelled, every replica stopped
        assert sorted(gate.stopped) == ["embedder-0", "policy-0"]

    asyncio.run(go())


def test_a_role_that_fails_to_start_is_refused_and_the_rest_keep_serving():
    async def go() -> None:
        gate = Gate(fail={"prm-0"})
        starting = asyncio.ensure_future(WorkerPool.start([GatedSpec("policy", gate), GatedSpec("prm", gate)], first={"policy"}))
        await _settle()
        gate.release["policy-0"].set()
        pool = await asyncio.wait_for(starting, 5)
        await _settle()
        gate.release["prm-0"].set()
        await _settle()
        [prm] = [e for e in pool.status() if e.role == "prm"]
        assert prm.state == "failed" and "out of memory" in prm.error
        with pytest.raises(EngineUnavailable) as err:
            await pool.generate("prm", _spec())
        assert not isinstance(err.value, EngineLoading) and err.value.retry_after is None and "failed to start" in err.value.message
        assert (await pool.generate("policy", _spec())).worker == "policy-0"
        await pool.shutdown()

    asyncio.run(go())


def test_a_first_role_that_fails_fails_the_start():
    async def go() -> None:
        gate = Gate(fail={"policy-0"})
        starting = asyncio.ensure_future(WorkerPool.start([GatedSpec("policy", gate), GatedSpec("prm", gate)], first={"policy"}))
        await _settle()
        gate.release["policy-0"].set()
        with pytest.raises(EngineError, match="out of memory"):
            await asyncio.wait_for(starting, 5)
        assert gate.began == ["policy-0"]  # the rest never started
        assert sorted(gate.stopped) == ["policy-0", "prm-0"]

    asyncio.run(go())


def test_without_first_every_role_is_waited_for():
    async def go() -> None:
        gate = Gate()
        starting = asyncio.ensure_future(WorkerPool.start([GatedSpec("policy", gate), GatedSpec("prm", gate)]))
        await _settle()
        gate.release["policy-0"].set()
        await _settle()
        assert not starting.done()
        gate.release["prm-0"].set()
        pool = await asyncio.wait_for(starting, 5)
        assert all(e.state == "ready" for e in pool.status())
        await pool.shutdown()

    asyncio.run(go())


def test_replicas_sharing_devices_load_one_at_a_time_even_together():
    """Fractions of one GPU: vLLM measures free memory while it loads, so such replicas never load at once,
    whether their role is waited for or loads behind."""

    async def go() -> None:
        gate = Gate()
        specs = [GatedSpec("policy", gate, start_one_by_one=True), GatedSpec("prm", gate, start_one_by_one=True), GatedSpec("embedder", gate)]
        starting = asyncio.ensure_future(WorkerPool.start(specs, first={"policy"}, rest="together"))
        await _settle()
        assert sorted(gate.began) == ["embedder-0", "policy-0"]  # prm waits for the policy's turn to end
        gate.release["policy-0"].set()
        pool = await asyncio.wait_for(starting, 5)
        await _settle()
        assert gate.began[-1] == "prm-0"
        gate.release["prm-0"].set()
        gate.release["embedder-0"].set()
        await _settle()
        assert all(e.state == "ready" for e in pool.status())
        await pool.shutdown()

    asyncio.run(go())


def test_a_retry_never_goes_to_a_replica_still_loading():
    """A role of two replicas, one ready and one loading: a call whose ready replica dies is retried on it (Ray
    restarts it), never on the one still loading its model."""

    async def go() -> None:
        gate = Gate(die_once={"draft-0"})
        starting = asyncio.ensure_future(WorkerPool.start([GatedSpec("policy", gate), GatedSpec("draft", gate, replicas=2)], first={"policy"}))
        await _settle()
        gate.release["policy-0"].set()
        pool = await asyncio.wait_for(starting, 5)
        gate.release["draft-0"].set()
        await _settle()
        assert [e.state for e in pool.status() if e.role == "draft"] == ["ready", "loading"]
        assert (await pool.generate("draft", _spec())).worker == "draft-0"
        assert pool.replica("draft-1").calls == 0 and pool.replica("draft-0").calls == 2
        await pool.shutdown()

    asyncio.run(go())
