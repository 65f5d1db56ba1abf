"""Coalesced actor calls (``ActorBackend._batched`` and ``EngineActor.batch``), over a scripted handle and engine:
no Ray started. Calls of one event-loop turn go as one ``batch`` call; each keeps its own result, error and
cancellation. Names the engine does not serve fail typed. The instant engine's selection by the workers file."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import RayActorError

from orchestrator.errors import ConfigError, EngineError, EngineUnavailable, InvalidRequest, WorkerDied
from orchestrator.types import SamplingSpec, ScoreSpec, Scores, Usage
from workers.actor import ActorBackend, EngineActor, served_calls
from workers.config import RoleConfig
from workers.factory import backend_spec
from workers.instant import InstantConfig, InstantSpec


class Engine:
    """What the actor holds: ``score`` answers after ``delay`` s; prompts name failures."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def score(self, spec: ScoreSpec) -> Scores:
        self.started.append(spec.prompt)
        try:
            await asyncio.sleep(0.05 if spec.prompt.startswith("slow") else 0)
        except asyncio.CancelledError:
            self.cancelled.append(spec.prompt)
            raise
        if spec.prompt == "bad":
            raise InvalidRequest("no such thing")
        if spec.prompt == "boom":
            raise ValueError("first line\nsecond line")
        return Scores(token_ids=(1, 2), start=0, logprobs=(-1.0,), candidate_logprobs=((),), usage=Usage(prompt_tokens=len(spec.prompt)), worker="prm-0")

    def tokenize(self, text: str) -> list[int]:  # a plain function, as VllmEngine's is
        return [len(text)]


class Method:
    def __init__(self, handle: Handle, name: str, streaming: bool = False) -> None:
        self.handle, self.name, self.streaming = handle, name, streaming

    def options(self, num_returns: str) -> Method:
        assert num_returns == "streaming"
        return Method(self.handle, self.name, streaming=True)

    def remote(self, *args):
        self.handle.sent.append((self.name, args))
        if self.streaming:
            return self._refs(*args)
        if self.handle.dead:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(RayActorError())
            return fut
        return asyncio.ensure_future(getattr(self.handle.actor, self.name)(*args))

    async def _refs(self, *args):
        """As Ray's ObjectRefGenerator: one awaitable per item the actor's generator yields."""
        if self.handle.dead:
            raise RayActorError()
        async for item in getattr(self.handle.actor, self.name)(*args):
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(item)
            yield fut


class Handle:
    def __init__(self, engine: Engine) -> None:
        self.engine, self.actor, self.sent, self.dead = engine, EngineActor(lambda: engine, "prm-0"), [], False

    def __getattr__(self, name: str) -> Method:
        return Method(self, name)


async def collect(batch) -> dict[int, object]:
    """What the actor's batch yielded, by the calls' positions."""
    return {i: o async for items in batch for i, o in items}


def backend() -> tuple[ActorBackend, Handle]:
    handle = Handle(Engine())
    return ActorBackend("prm-0", handle, serves=served_calls(Engine)), handle  # type: ignore[arg-type]


def test_calls_of_one_turn_go_as_one_actor_call_and_each_gets_its_own_result():
    async def main() -> None:
        b, h = backend()
        out = await asyncio.gather(*(b.score(ScoreSpec(f"p{i}" * (i + 1))) for i in range(8)))
        assert [o.usage.prompt_tokens for o in out] == [2 * (i + 1) for i in range(8)]
        assert [name for name, _ in h.sent] == ["batch"] and len(h.sent[0][1][0]) == 8
        # A call alone in its turn goes as a call of its own.
        h.sent.clear()
        assert (await b.score(ScoreSpec("alone"))).usage.prompt_tokens == 5
        assert h.sent == [("call", ("score", ScoreSpec("alone")))]

    asyncio.run(main())


def test_a_failing_call_fails_alone_with_the_error_a_call_of_its_own_would_raise():
    async def main() -> None:
        b, _ = backend()
        out = await asyncio.gather(*(b.score(ScoreSpec(p)) for p in ("ok", "bad", "boom", "fine")), return_exceptions=True)
        assert isinstance(out[0], Scores) and isinstance(out[3], Scores)
        assert isinstance(out[1], InvalidRequest) and out[1].message == "no such thing"
        assert type(out[2]) is EngineError and out[2].message == "prm-0: second line"

    asyncio.run(main())


def test_cancelling_one_call_cancels_it_in_the_actor_and_leaves_the_others():
    async def main() -> None:
        b, h = backend()
        tasks = [asyncio.ensure_future(b.score(ScoreSpec(p))) for p in ("slow-a", "slow-b", "slow-c")]
        await asyncio.sleep(0.01)  # sent, running in the actor
        tasks[1].cancel()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(out[0], Scores) and isinstance(out[2], Scores) and isinstance(out[1], asyncio.CancelledError)
        assert h.engine.cancelled == ["slow-b"]
        assert not h.actor._running  # nothing left running
        # Cancelled before its turn ended: never sent.
        h.sent.clear()
        t = asyncio.ensure_future(b.score(ScoreSpec("never")))
        other = asyncio.ensure_future(b.score(ScoreSpec("sent")))
        await asyncio.sleep(0)
        t.cancel()
        await asyncio.gather(t, other, return_exceptions=True)
        assert "never" not in h.engine.started and "sent" in h.engine.started

    asyncio.run(main())


def test_each_call_of_a_batch_is_answered_when_it_ends_not_when_the_slowest_does():
    # A race's n calls share one turn, hence one batch: the first to finish must reach its caller at once, or
    # First Finish Search has nothing left to abort.
    async def main() -> None:
        b, _ = backend()
        fast = asyncio.ensure_future(b.score(ScoreSpec("quick")))
        slow = asyncio.ensure_future(b.score(ScoreSpec("slow-1")))
        done, _ = await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast} and not slow.done()
        assert isinstance(await slow, Scores)

    asyncio.run(main())


def test_a_cancel_that_arrives_before_its_batch_stops_the_call_before_it_starts():
    async def main() -> None:
        engine = Engine()
        actor = EngineActor(lambda: engine, "prm-0")
        await actor.cancel(["k2"])
        out = await collect(actor.batch([("k1", "score", (ScoreSpec("x"),)), ("k2", "score", (ScoreSpec("y"),))]))
        assert isinstance(out[0], Scores) and isinstance(out[1], EngineError)
        assert engine.started == ["x"]
        assert actor.calls() == 1  # the call cancelled before it arrived never ran

    asyncio.run(main())


def test_the_actor_runs_only_the_calls_of_the_protocol_and_refuses_others_typed():
    async def main() -> None:
        engine = Engine()
        actor = EngineActor(lambda: engine, "prm-0")
        assert await actor.call("tokenize", "abc") == [3]  # a plain function's result, as a coroutine's
        for name in ("__init__", "started", "nonsense", "embed", "generate"):  # not a call, or not the engine's
            with pytest.raises(EngineUnavailable, match=f"prm-0: does not serve `{name}`"):
                await actor.call(name)
        with pytest.raises(EngineUnavailable, match="does not serve `score`"):  # not a stream
            [d async for d in actor.stream("score", ScoreSpec("x"))]
        out = await collect(actor.batch([("k1", "nonsense", ()), ("k2", "score", (ScoreSpec("x"),))]))
        assert isinstance(out[0], EngineUnavailable) and isinstance(out[1], Scores)

    asyncio.run(main())


def test_a_call_the_engine_does_not_serve_is_refused_without_asking_the_actor():
    async def main() -> None:
        b, h = backend()
        with pytest.raises(EngineUnavailable, match="prm-0: does not serve `generate`"):
            await b.generate(SamplingSpec("Q", max_tokens=4))
        with pytest.raises(EngineUnavailable, match="does not serve `stream`"):
            [d async for d in b.stream(SamplingSpec("Q", max_tokens=4))]
        await b.abort(["r1"])  # nothing of it can be running: ignored, as Unsupported ignores it
        assert h.sent == []
        assert (await b.score(spec=ScoreSpec("kw"))).usage.prompt_tokens == 2  # keyword arguments as the protocol names them

    asyncio.run(main())


def test_a_dead_worker_fails_every_call_of_the_batch_as_worker_died():
    async def main() -> None:
        b, h = backend()
        h.dead = True
        out = await asyncio.gather(*(b.score(ScoreSpec(f"p{i}")) for i in range(3)), return_exceptions=True)
        assert all(isinstance(o, WorkerDied) and o.worker == "prm-0" for o in out)
        assert len({id(o) for o in out}) == 3  # each caller raises its own

    asyncio.run(main())


def test_the_workers_file_selects_the_instant_engine_by_url():
    spec = backend_spec("prm", RoleConfig(url="instant:", replicas=2, cpus=0.5))
    assert isinstance(spec, InstantSpec) and spec.config == InstantConfig() and spec.replicas == 2 and spec.placement.num_cpus == 0.5
    assert backend_spec("policy", RoleConfig(url="instant:?steps=6&answer=7")).config == InstantConfig(steps=6, answer=7)
    with pytest.raises(ConfigError, match="unknown"):
        backend_spec("policy", RoleConfig(url="instant:?stepz=6"))
    with pytest.raises(ConfigError, match="whole numbers"):
        backend_spec("policy", RoleConfig(url="instant:?steps=many"))
