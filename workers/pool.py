"""A pool of engines addressed by model role: local vLLM engines in Ray actors, or remote `vllm serve` servers.

Each call goes to one replica of its role, chosen by prefix affinity or load (``workers.routing``). A replica
that dies mid-call fails the call with :class:`WorkerDied` naming it; the pool retries such a call once on
another replica (Ray restarts the dead actor meanwhile), and every call has a deadline after which it is
aborted with :class:`EngineTimeout`. This package is the only one that imports ray or vllm.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence, TypeVar

import ray
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

from orchestrator.errors import EngineError, EngineTimeout, EngineUnavailable, TTSError, WorkerDied
from orchestrator.types import EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta
from workers.config import PoolConfig, RoleConfig
from workers.embedder import SentenceEmbedder
from workers.engine import EngineConfig, VllmEngine
from workers.remote import RemoteEngine
from workers.routing import AffinityConfig, PrefixRouter, Route

log = logging.getLogger(__name__)
T = TypeVar("T")


@ray.remote
class EngineActor:
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


@ray.remote
class EmbedderActor:
    """Ray actor around :class:`SentenceEmbedder`, loaded lazily like the engines (so restarts reload it)."""

    def __init__(self, model_path: Path | None, name: str) -> None:
        self._path = model_path
        self._name = name
        self._embedder: SentenceEmbedder | None = None

    def _ready(self) -> SentenceEmbedder:
        if self._embedder is None:
            self._embedder = SentenceEmbedder(self._path, name=self._name)
        return self._embedder

    def start(self) -> str:
        self._ready()
        return self._name

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self._ready().embed(texts)

    def shutdown(self) -> None:
        self._embedder = None


# ---------------------------------------------------------------------------------------------- replicas


class ActorReplica:
    """A local engine in a Ray actor; turns Ray's failures into the service's typed errors."""

    def __init__(self, name: str, handle: ray.actor.ActorHandle) -> None:
        self.name = name
        self.handle = handle

    async def _await(self, ref: ray.ObjectRef) -> Any:
        try:
            return await ref
        except asyncio.CancelledError:
            # Cancelling the awaiting task must stop the engine's work: cancel the actor's coroutine, which
            # aborts the vLLM request.
            ray.cancel(ref)
            raise
        except RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, TTSError):
                raise cause from None
            raise EngineError(str(getattr(err, "cause", err)).strip().splitlines()[-1], worker=self.name) from None
        except TaskCancelledError:
            raise EngineError("call was cancelled", worker=self.name) from None
        except RayActorError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WorkerDied(f"worker process died mid-call ({reason})", worker=self.name) from None

    async def start(self) -> None:
        await self._await(self.handle.start.remote())

    async def generate(self, spec: SamplingSpec) -> Generation:
        return await self._await(self.handle.generate.remote(spec))

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        gen = self.handle.stream.options(num_returns="streaming").remote(spec)
        try:
            async for ref in gen:
                yield await self._await(ref)
        except RayActorError as err:
            raise WorkerDied(f"worker process died mid-stream ({type(err).__name__})", worker=self.name) from None
        finally:
            try:
                ray.cancel(gen)  # stops the actor's generator if the consumer left early
            except Exception:  # noqa: BLE001 - already finished or gone: nothing to stop
                pass

    async def abort(self, request_ids: Sequence[str]) -> None:
        await self._await(self.handle.abort.remote(list(request_ids)))

    async def score(self, spec: ScoreSpec) -> Scores:
        return await self._await(self.handle.score.remote(spec))

    async def tokenize(self, text: str) -> list[int]:
        return await self._await(self.handle.tokenize.remote(text))

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return await self._await(self.handle.render_chat.remote(list(messages)))

    async def stats(self) -> EngineStats:
        return await self._await(self.handle.stats.remote())

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self._await(self.handle.embed.remote(list(texts)))

    async def shutdown(self) -> None:
        try:
            await self.handle.shutdown.remote()
        except RayActorError:
            pass  # already gone: nothing left to stop
        ray.kill(self.handle, no_restart=True)


class RemoteReplica:
    """A remote `vllm serve` as a replica; the calls are the engine's own."""

    def __init__(self, engine: RemoteEngine) -> None:
        self.name = engine.name
        self.engine = engine

    async def start(self) -> None:
        await self.engine.stats()  # fails fast with WorkerDied when the server is unreachable

    def __getattr__(self, item: str) -> Any:
        return getattr(self.engine, item)

    async def shutdown(self) -> None:
        await self.engine.aclose()


Replica = ActorReplica | RemoteReplica


@dataclass(frozen=True)
class WorkerSpec:
    """One role served by ``replicas`` engines of the same configuration."""

    role: Role
    engine: EngineConfig | None = None
    replicas: int = 1
    num_cpus: float = 0.25  # the actor mostly waits; its engine-core process does the work
    num_gpus: float = 0.0
    remote_url: str | None = None
    remote_model: str | None = None
    api_key: str | None = None
    embedder_path: Path | None = None  # role "embedder": a sentence-transformers directory
    resources: tuple[tuple[str, float], ...] = ()  # custom Ray resources per replica (pins a role to nodes)

    @classmethod
    def from_config(cls, role: Role, rc: RoleConfig) -> WorkerSpec:
        pinned = tuple(sorted(rc.resources.items()))
        if role == "embedder":
            return cls(role, replicas=rc.replicas, num_cpus=rc.cpus, embedder_path=rc.model, resources=pinned)
        if rc.url is not None:
            return cls(role, replicas=rc.replicas, remote_url=rc.url, remote_model=rc.served_model or role, api_key=rc.api_key)
        assert rc.model is not None
        engine = EngineConfig(
            model_path=rc.model,
            dtype=rc.dtype,
            max_model_len=rc.max_model_len,
            kv_cache_gib=rc.kv_cache_gib,
            gpu_memory_utilization=rc.gpu_memory_utilization,
            max_num_seqs=rc.max_num_seqs,
            seed=rc.seed,
        )
        return cls(role, engine=engine, replicas=rc.replicas, num_cpus=rc.cpus, num_gpus=rc.gpus, resources=pinned)


# ---------------------------------------------------------------------------------------------- the pool


class WorkerPool:
    """Implements the orchestrator's ``Engine`` protocol over replicas grouped by role."""

    def __init__(
        self,
        replicas: dict[Role, list[Replica]],
        *,
        call_timeout_s: float = 600.0,
        affinity: AffinityConfig = AffinityConfig(),
    ) -> None:
        self._replicas = replicas
        self._by_name: dict[str, Replica] = {r.name: r for group in replicas.values() for r in group}
        self._routers = {role: PrefixRouter([r.name for r in group], affinity) for role, group in replicas.items()}
        self._load: dict[str, int] = {name: 0 for name in self._by_name}
        self._running: dict[str, Replica] = {}  # request id -> where it runs, for abort
        self.call_timeout_s = call_timeout_s
        # request id -> routing decision of the most recent calls, for tests, benchmarks and logs
        self.last_route: OrderedDict[str, Route] = OrderedDict()

    @classmethod
    async def start(
        cls,
        specs: Sequence[WorkerSpec],
        *,
        call_timeout_s: float = 600.0,
        affinity: AffinityConfig = AffinityConfig(),
        max_restarts: int = 3,
    ) -> WorkerPool:
        """Start every replica and wait until each engine has loaded its model (or answered, if remote)."""
        tag = uuid.uuid4().hex[:6]
        replicas: dict[Role, list[Replica]] = {}
        for spec in specs:
            for i in range(spec.replicas):
                name = f"{spec.role}-{i}"
                if spec.remote_url is not None:
                    remote = RemoteEngine(spec.remote_url, model=spec.remote_model or spec.role, name=name, api_key=spec.api_key)
                    replicas.setdefault(spec.role, []).append(RemoteReplica(remote))
                    continue
                if spec.role == "embedder":
                    handle = EmbedderActor.options(
                        name=f"tts-{tag}-{name}",
                        num_cpus=spec.num_cpus,
                        resources=dict(spec.resources),
                        max_restarts=max_restarts,
                        max_concurrency=4,
                        scheduling_strategy="SPREAD",
                    ).remote(spec.embedder_path, name)
                    replicas.setdefault(spec.role, []).append(ActorReplica(name, handle))
                    continue
                assert spec.engine is not None, f"role {spec.role}: neither a local engine nor a remote url"
                handle = EngineActor.options(
                    name=f"tts-{tag}-{name}",
                    num_cpus=spec.num_cpus,
                    num_gpus=spec.num_gpus,
                    resources=dict(spec.resources),
                    max_concurrency=1000,
                    max_restarts=max_restarts,
                    # Replicas of a role on different nodes where it can: one node's loss then takes one replica.
                    scheduling_strategy="SPREAD",
                    max_task_retries=0,  # the pool decides about retries: it knows which calls are safe to repeat
                ).remote(replace(spec.engine, seed=spec.engine.seed + i), name)
                replicas.setdefault(spec.role, []).append(ActorReplica(name, handle))
        pool = cls(replicas, call_timeout_s=call_timeout_s, affinity=affinity)
        try:
            await asyncio.gather(*(r.start() for group in replicas.values() for r in group))
        except BaseException as err:
            await pool.shutdown()
            if isinstance(err, EngineError):
                raise
            raise EngineError(f"a worker failed to start: {err}") from None
        return pool

    @classmethod
    async def from_config(cls, config: PoolConfig) -> WorkerPool:
        specs = [WorkerSpec.from_config(role, rc) for role, rc in config.roles.items()]
        affinity = AffinityConfig(
            block=config.affinity_block, min_match_blocks=config.affinity_min_blocks, max_imbalance=config.affinity_max_imbalance
        )
        return await cls.start(specs, call_timeout_s=config.call_timeout_s, affinity=affinity)

    # ------------------------------------------------------------------------------------------ routing

    def roles(self) -> frozenset[Role]:
        return frozenset(self._replicas)

    def replica_names(self, role: Role) -> list[str]:
        return [r.name for r in self._group(role)]

    def replica(self, name: str) -> Replica:
        return self._by_name[name]

    def _group(self, role: Role) -> list[Replica]:
        group = self._replicas.get(role)
        if not group:
            raise EngineUnavailable(f"no worker serves role {role!r}; served: {sorted(self._replicas)}")
        return group

    @contextmanager
    def _placed(self, role: Role, prompt: str | Sequence[int], request_id: str, exclude: Sequence[str] = ()) -> Iterator[Replica]:
        """Route one call and count it against its replica (load, abort map) while it runs."""
        self._group(role)
        route = self._routers[role].pick(prompt, self._load, exclude=exclude)
        replica = self._by_name[route.replica]
        self._note_route(request_id, route)
        self._load[replica.name] += 1
        self._running[request_id] = replica
        try:
            yield replica
        finally:
            self._load[replica.name] -= 1
            self._running.pop(request_id, None)

    async def _dispatch(self, role: Role, prompt: str | Sequence[int], request_id: str, call: Callable[[Replica], Awaitable[T]]) -> T:
        """Run ``call`` on a routed replica within the deadline; on WorkerDied try once more elsewhere."""
        tried: list[str] = []
        try:
            async with asyncio.timeout(self.call_timeout_s):
                while True:
                    with self._placed(role, prompt, request_id, exclude=tried) as replica:
                        tried.append(replica.name)
                        try:
                            return await call(replica)
                        except WorkerDied as err:
                            self._after_death(role, err, tried, request_id)
        except TimeoutError:
            raise EngineTimeout(
                f"no result within the {self.call_timeout_s:g} s deadline; the call was aborted", worker=tried[-1] if tried else ""
            ) from None

    def _after_death(self, role: Role, err: WorkerDied, tried: list[str], request_id: str, *, retry: bool = True) -> None:
        """The worker of the last of ``tried`` died under a call: keep it out of rotation, and re-raise unless
        the call may be tried once more elsewhere (first try, and ``retry``)."""
        self._routers[role].mark_failed(tried[-1])
        if not retry or len(tried) > 1:
            raise err
        log.warning("%s; retrying request %s once on another replica", err.message, request_id)

    def _note_route(self, request_id: str, route: Route) -> None:
        self.last_route[request_id] = route
        while len(self.last_route) > 1000:
            self.last_route.popitem(last=False)

    # ------------------------------------------------------------------------------------------ calls

    async def generate(self, role: Role, spec: SamplingSpec) -> Generation:
        spec = _with_id(spec)
        return await self._dispatch(role, spec.prompt, spec.request_id, lambda r: r.generate(spec))  # type: ignore[arg-type]

    async def stream(self, role: Role, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        """Partial outputs as they are produced, within the call deadline. A stream whose worker dies before
        its first part is retried once on another replica, as a call is; once a part has been passed on it
        is not (the caller may already have acted on it)."""
        spec = _with_id(spec)
        tried: list[str] = []
        deadline = asyncio.get_running_loop().time() + self.call_timeout_s
        while True:
            with self._placed(role, spec.prompt, spec.request_id, exclude=tried) as replica:  # type: ignore[arg-type]
                tried.append(replica.name)
                started = False
                try:
                    async with asyncio.timeout_at(deadline):
                        async for delta in replica.stream(spec):
                            started = True
                            yield delta
                    return
                except TimeoutError:
                    raise EngineTimeout(f"stream ran past the {self.call_timeout_s:g} s deadline; aborted", worker=replica.name) from None
                except WorkerDied as err:
                    self._after_death(role, err, tried, spec.request_id, retry=not started)

    async def abort(self, request_ids: Sequence[str]) -> None:
        """Abort running calls by request id (unknown or finished ids are ignored)."""
        by_replica: dict[str, list[str]] = {}
        for rid in request_ids:
            replica = self._running.get(rid)
            if replica is not None:
                by_replica.setdefault(replica.name, []).append(rid)
        await asyncio.gather(*(self._by_name[name].abort(ids) for name, ids in by_replica.items()))

    async def score(self, role: Role, spec: ScoreSpec) -> Scores:
        spec = _with_id(spec)
        return await self._dispatch(role, spec.prompt, spec.request_id, lambda r: r.score(spec))  # type: ignore[arg-type]

    async def tokenize(self, role: Role, text: str) -> list[int]:
        return await self._dispatch(role, "", uuid.uuid4().hex, lambda r: r.tokenize(text))

    async def render_chat(self, role: Role, messages: Sequence[dict[str, str]]) -> str:
        return await self._dispatch(role, "", uuid.uuid4().hex, lambda r: r.render_chat(messages))

    async def embed(self, role: Role, texts: Sequence[str]) -> list[list[float]]:
        return await self._dispatch(role, "", uuid.uuid4().hex, lambda r: r.embed(texts))

    async def stats(self, role: Role | None = None) -> list[EngineStats]:
        group = self._group(role) if role else [r for name, r in self._by_name.items() if not name.startswith("embedder")]
        return list(await asyncio.gather(*(r.stats() for r in group)))

    async def shutdown(self) -> None:
        for group in self._replicas.values():
            for replica in group:
                await replica.shutdown()
        self._replicas = {}
        self._by_name = {}


S = TypeVar("S", SamplingSpec, ScoreSpec)


def _with_id(spec: S) -> S:
    """The spec with a request id (a fresh one when it has none), so that the call can be aborted."""
    return spec if spec.request_id else replace(spec, request_id=uuid.uuid4().hex)


def connect_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one (no dashboard) when it is None."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set for the driver of a Ray job
    if address:
        ray.init(address=address)
    else:
        # Ray starts workers at niceness 15 by default, which starves engine actors behind any other
        # busy process on the node (the API itself, a benchmark's reference engine).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
