"""The local backend: a vLLM engine (:class:`VllmEngine`) in a Ray actor, one per replica.

A replica that dies mid-call fails the call with :class:`WorkerDied` naming it; Ray restarts the actor (up to
``max_restarts``), whose engine reloads on its next call.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace
from typing import AsyncIterator, Awaitable, Sequence, TypeVar

import ray
from ray.exceptions import RayActorError

from orchestrator.errors import ConfigError, WorkerDied
from orchestrator.types import EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta
from workers.actor import ActorBackend, BatchedCalls, Placement
from workers.backend import TokenClasses
from workers.config import RoleConfig
from workers.engine import EngineConfig, VllmEngine

T = TypeVar("T")


@ray.remote
class EngineActor(BatchedCalls):
    """Ray actor around :class:`VllmEngine` (an async actor: many calls share its event loop).

    The engine is built lazily inside the actor's loop, so a restarted actor (Ray re-runs ``__init__``)
    reloads its model on the first call. If the vLLM engine dies the actor exits, so Ray restarts it."""

    def __init__(self, config: EngineConfig, name: str) -> None:
        self._config = config
        self._name = name
        self._engine: VllmEngine | None = None
        self._lock: asyncio.Lock | None = None

    async def _ready(self) -> VllmEngine:
        if self._engine is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._engine is None:
                    self._engine = VllmEngine.create(self._config, name=self._name)
        return self._engine

    def _die_soon(self) -> None:
        # Return the typed error first, then exit so that Ray restarts this actor with a fresh engine.
        asyncio.get_running_loop().call_later(0.5, os._exit, 1)

    async def _guard(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except WorkerDied:
            self._die_soon()
            raise

    async def start(self) -> str:
        await self._ready()
        return self._name

    async def generate(self, spec: SamplingSpec) -> Generation:
        return await self._guard((await self._ready()).generate(spec))

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        engine = await self._ready()
        try:
            async for delta in engine.stream(spec):
                yield delta
        except WorkerDied:
            self._die_soon()
            raise

    async def abort(self, request_ids: list[str]) -> None:
        await (await self._ready()).abort(request_ids)

    async def score(self, spec: ScoreSpec) -> Scores:
        return await self._guard((await self._ready()).score(spec))

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        return await self._guard((await self._ready()).classify_tokens(spec))

    async def tokenize(self, text: str) -> list[int]:
        return (await self._ready()).tokenize(text)

    async def render_chat(self, messages: list[dict[str, str]]) -> str:
        return (await self._ready()).render_chat(messages)

    async def stats(self) -> EngineStats:
        return (await self._ready()).stats()

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


class LocalEngine(ActorBackend):
    """:class:`workers.backend.Backend` over an :class:`EngineActor`; embedding is not served. Generate, score
    and classify calls made in one event-loop turn reach the actor as one Ray call (``ActorBackend._batched``)."""

    async def generate(self, spec: SamplingSpec) -> Generation:
        return await self._batched("generate", spec)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        gen: ray.ObjectRefGenerator = self.handle.stream.options(num_returns="streaming").remote(spec)
        try:
            async for ref in gen:
                yield await self._call(ref)
        except RayActorError as err:
            raise WorkerDied(f"worker process died mid-stream ({type(err).__name__})", worker=self.name) from None
        finally:
            try:
                ray.cancel(gen)  # stops the actor's generator if the consumer left early
            except Exception:  # noqa: BLE001 - already finished or gone: nothing to stop
                pass

    async def abort(self, request_ids: Sequence[str]) -> None:
        if self._pending:
            self._flush()  # calls of this turn not sent yet go first, so that the abort finds them
        await self._call(self.handle.abort.remote(list(request_ids)))

    async def score(self, spec: ScoreSpec) -> Scores:
        return await self._batched("score", spec)

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        return await self._batched("classify_tokens", spec)

    async def tokenize(self, text: str) -> list[int]:
        return await self._call(self.handle.tokenize.remote(text))

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return await self._call(self.handle.render_chat.remote(list(messages)))

    async def stats(self) -> EngineStats:
        return await self._call(self.handle.stats.remote())


_ENGINE_FIELDS = {
    "dtype",
    "max_model_len",
    "kv_cache_gib",
    "gpu_memory_utilization",
    "max_num_seqs",
    "seed",
    "runner",
    "convert",
    "step_tag",
    "tensor_parallel_size",
    "quantization",
    "trust_remote_code",
    "max_logprobs",
    "block_size",
    "enforce_eager",
    "in_process_worker",
}


@dataclass(frozen=True)
class LocalSpec:
    """A role served by ``replicas`` local engines of one configuration; replica i samples with seed + i."""

    role: Role
    engine: EngineConfig
    replicas: int = 1
    placement: Placement = Placement()

    @classmethod
    def from_config(cls, role: Role, rc: RoleConfig) -> LocalSpec:
        if rc.model is None:
            raise ConfigError(f"role {role}: a local engine needs `model`")
        # The engine's settings are the role's fields of the same names.
        engine = EngineConfig(model_path=rc.model, **rc.model_dump(include=_ENGINE_FIELDS))
        if rc.serves_pooling():
            # vLLM keeps prefix caching off for pooling models unless told otherwise, and warns that forcing
            # it on may crash them: leave it to vLLM.
            engine = replace(engine, enable_prefix_caching=None)
        placement = Placement(num_cpus=rc.cpus, num_gpus=rc.gpus, resources=tuple(sorted(rc.resources.items())))
        return cls(role, engine=engine, replicas=rc.replicas, placement=placement)

    @property
    def start_one_by_one(self) -> bool:
        return self.placement.shares_devices

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> LocalEngine:
        handle = EngineActor.options(
            **self.placement.actor_options(name, tag=tag, max_restarts=max_restarts),
            max_concurrency=1000,
            max_task_retries=0,  # the pool decides about retries: it knows which calls are safe to repeat
        ).remote(replace(self.engine, seed=self.engine.seed + index), name)
        return LocalEngine(name, handle)
