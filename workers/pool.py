"""A pool of Ray actors, each owning one vLLM engine, addressed by model role.

This and ``workers.engine`` are the only modules that import ray or vllm."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass, replace
from typing import Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError

from orchestrator.errors import EngineError, EngineUnavailable
from orchestrator.types import Generation, Role, SamplingSpec
from workers.engine import EngineConfig, VllmEngine

log = logging.getLogger(__name__)


@ray.remote
class EngineActor:
    """Ray actor around :class:`VllmEngine` (an async actor: many calls share its event loop)."""

    def __init__(self, config: EngineConfig, name: str) -> None:
        self._config = config
        self._name = name
        self._engine: VllmEngine | None = None

    async def start(self) -> str:
        # AsyncLLM wants the actor's running event loop, so it is built here rather than in __init__.
        if self._engine is None:
            self._engine = VllmEngine.create(self._config, name=self._name)
        return self._name

    async def generate(self, spec: SamplingSpec) -> Generation:
        assert self._engine is not None, "start() first"
        return await self._engine.generate(spec)

    async def render_chat(self, messages: list[dict[str, str]]) -> str:
        assert self._engine is not None, "start() first"
        return self._engine.render_chat(messages)

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


@dataclass(frozen=True)
class WorkerSpec:
    """One role served by ``replicas`` actors of the same engine configuration."""

    role: Role
    engine: EngineConfig
    replicas: int = 1
    num_cpus: float = 1.0


class WorkerPool:
    """Implements the orchestrator's ``Engine`` protocol over Ray actors (round-robin per role)."""

    def __init__(self, actors: dict[Role, list[tuple[str, ray.actor.ActorHandle]]]) -> None:
        self._actors = actors
        self._next = {role: itertools.cycle(range(len(a))) for role, a in actors.items()}

    @classmethod
    async def start(cls, specs: Sequence[WorkerSpec]) -> WorkerPool:
        """Start every actor and wait until each engine has loaded its model."""
        actors: dict[Role, list[tuple[str, ray.actor.ActorHandle]]] = {}
        for spec in specs:
            for i in range(spec.replicas):
                name = f"{spec.role}-{i}"
                handle = EngineActor.options(num_cpus=spec.num_cpus, max_concurrency=1000).remote(
                    replace(spec.engine, seed=spec.engine.seed + i), name
                )
                actors.setdefault(spec.role, []).append((name, handle))
        pool = cls(actors)
        try:
            await asyncio.gather(*(h.start.remote() for group in actors.values() for _, h in group))
        except (RayActorError, RayTaskError) as err:
            await pool.shutdown()
            raise EngineError(f"a worker failed to start: {err}") from None
        return pool

    def roles(self) -> frozenset[Role]:
        return frozenset(self._actors)

    def _pick(self, role: Role) -> tuple[str, ray.actor.ActorHandle]:
        group = self._actors.get(role)
        if not group:
            raise EngineUnavailable(f"no worker serves role {role!r}; served: {sorted(self._actors)}")
        return group[next(self._next[role])]

    async def _call(self, name: str, ref: ray.ObjectRef):  # noqa: ANN202 - whatever the actor returns
        try:
            return await ref
        except asyncio.CancelledError:
            # Cancelling the awaiting task must stop the engine's work: this cancels the actor's
            # coroutine, which aborts the vLLM request.
            ray.cancel(ref)
            raise
        except RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, EngineError):
                raise cause from None
            raise EngineError(str(getattr(err, "cause", err)).strip().splitlines()[-1], worker=name) from None
        except RayActorError as err:
            raise EngineError(f"worker died: {err}", worker=name) from None

    async def generate(self, role: Role, spec: SamplingSpec) -> Generation:
        name, actor = self._pick(role)
        return await self._call(name, actor.generate.remote(spec))

    async def render_chat(self, role: Role, messages: Sequence[dict[str, str]]) -> str:
        name, actor = self._pick(role)
        return await self._call(name, actor.render_chat.remote(list(messages)))

    async def shutdown(self) -> None:
        for group in self._actors.values():
            for _, handle in group:
                try:
                    await handle.shutdown.remote()
                except RayActorError:
                    pass  # already gone: nothing left to stop
                ray.kill(handle)
        self._actors = {}


def connect_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one (no dashboard) when it is None."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        # Ray starts workers at niceness 15 by default, which starves engine actors behind any other
        # busy process on the node (the API itself, a benchmark's reference engine).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
