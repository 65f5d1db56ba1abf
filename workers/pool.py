"""A pool of backends addressed by model role: routing, retry and placement, over :class:`Backend` only.

Each call goes to one replica of its role, chosen by prefix affinity or load (``workers.routing``). A replica
that dies mid-call fails the call with :class:`WorkerDied` naming it; the pool retries such a call once on
another replica (Ray restarts a dead actor meanwhile), and every call has a deadline after which it is
aborted with :class:`EngineTimeout`. What serves a role is the factory's choice (``workers.factory``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import replace
from typing import AsyncIterator, Awaitable, Callable, Collection, Iterator, Literal, Sequence, TypeVar

from orchestrator.errors import EngineError, EngineLoading, EngineTimeout, EngineUnavailable, WorkerDied
from orchestrator.types import EngineState, EngineStats, EngineStatus, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta, TokenClasses
from workers.backend import Backend, BackendSpec
from workers.cluster import connect_ray, leave_ray, local_ray_lost
from workers.config import PoolConfig
from workers.factory import backend_spec, build_backends
from workers.routing import AffinityConfig, PrefixRouter, Route

# connect_ray, leave_ray and local_ray_lost are re-exported: the service and its tools join the cluster, build
# the pool, watch the local Ray and leave from one import.
__all__ = ["WorkerPool", "connect_ray", "leave_ray", "local_ray_lost"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerPool:
    """Implements the orchestrator's ``Engine`` protocol over backends (replicas) grouped by role."""

    def __init__(
        self,
        replicas: dict[Role, list[Backend]],
        *,
        call_timeout_s: float = 600.0,
        affinity: AffinityConfig = AffinityConfig(),
    ) -> None:
        self._replicas = replicas
        self._by_name: dict[str, Backend] = {r.name: r for group in replicas.values() for r in group}
        self._routers = {role: PrefixRouter([r.name for r in group], affinity) for role, group in replicas.items()}
        self._load: dict[str, int] = {name: 0 for name in self._by_name}
        self._running: dict[str, Backend] = {}  # request id -> where it runs, for abort
        self.call_timeout_s = call_timeout_s
        # Replicas are ready unless started by `start` with roles loading behind the first (its `first`).
        self._state: dict[str, EngineState] = {name: "ready" for name in self._by_name}
        self._since: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._t0 = time.perf_counter()
        self._background: asyncio.Task[None] | None = None
        # request id -> routing decision of the most recent calls, for tests, benchmarks and logs
        self.last_route: OrderedDict[str, Route] = OrderedDict()

    @classmethod
    async def start(
        cls,
        specs: Sequence[BackendSpec],
        *,
        call_timeout_s: float = 600.0,
        affinity: AffinityConfig = AffinityConfig(),
        max_restarts: int = 3,
        first: Collection[Role] | None = None,
        rest: Literal["after", "together"] = "after",
    ) -> WorkerPool:
        """Start every replica and wait until each engine has loaded its model (or answered, if remote).
        Replicas of specs that share devices (``start_one_by_one``) start one after another, across roles
        too, alongside all the others at once.

        With ``first``, only those roles are waited for (a replica of theirs that fails to start fails this
        call); the other roles keep loading in the background, ``after`` the first are ready (on a machine
        whose cores they would share: the first then load alone) or ``together`` with them, and their calls
        are refused with :class:`EngineLoading` until one of their replicas is ready (:meth:`status`). One of
        theirs that fails to start is logged and its role refused with :class:`EngineUnavailable`."""
        replicas = build_backends(specs, max_restarts=max_restarts)
        pool = cls(replicas, call_timeout_s=call_timeout_s, affinity=affinity)
        pool._state = {name: "loading" for name in pool._by_name}
        shared = {spec.role for spec in specs if spec.start_one_by_one}
        # In the configured order: replicas sharing devices load in it, one at a time across both phases.
        wait = [role for role in replicas if first is None or role in first]
        later = [role for role in replicas if role not in wait]
        one_at_a_time = asyncio.Lock()  # FIFO: whoever asks first loads first

        # Loading engines takes a while (tens of seconds each on CPU, more with a cold compile cache): say
        # what is loading and each engine as it becomes ready, so a first start is not a silent minute.
        total, ready, t0 = len(pool._by_name), 0, time.perf_counter()
        pool._t0 = t0
        log.info(
            "loading %d engine(s): %s%s", total, ", ".join(pool._by_name),
            f" (serving once {', '.join(wait)} is ready; {', '.join(later)} {'after it' if rest == 'after' else 'alongside'})" if later else "",
        )

        async def start(replica: Backend, *, optional: bool) -> None:
            nonlocal ready
            try:
                await replica.start()
            except BaseException as err:
                pool._state[replica.name] = "failed"
                pool._since[replica.name] = time.perf_counter() - t0
                if not optional or not isinstance(err, Exception):
                    raise
                pool._errors[replica.name] = str(err.message if isinstance(err, EngineError) else err).strip().splitlines()[-1][:300] or type(err).__name__
                log.error("engine %s failed to start after %.1f s: %s; its role is refused", replica.name, pool._since[replica.name], pool._errors[replica.name])
                return
            pool._state[replica.name] = "ready"
            pool._since[replica.name] = time.perf_counter() - t0
            ready += 1
            log.info("engine %s ready (%d/%d) after %.1f s", replica.name, ready, total, pool._since[replica.name])

        async def start_in_turn(replica: Backend, *, optional: bool) -> None:
            async with one_at_a_time:
                await start(replica, optional=optional)

        async def start_roles(roles: Collection[Role], *, optional: bool) -> None:
            await asyncio.gather(
                *((start_in_turn if role in shared else start)(r, optional=optional) for role in roles for r in replicas[role])
            )

        async def start_later(after: asyncio.Future[None] | None) -> None:
            if after is not None:
                try:
                    await after
                except BaseException:
                    return  # the first roles failed: this pool is being shut down
            await start_roles(later, optional=True)
            log.info("every engine loaded after %.1f s (%d of %d ready)", time.perf_counter() - t0, ready, total)

        try:
            waiting = asyncio.ensure_future(start_roles(wait, optional=False))
            if later:
                pool._background = asyncio.create_task(start_later(waiting if rest == "after" else None), name="tts-engines-loading")
            await waiting
        except BaseException as err:
            await pool.shutdown()
            if isinstance(err, EngineError):
                raise
            raise EngineError(f"a worker failed to start: {err}") from None
        return pool

    @classmethod
    async def from_config(cls, config: PoolConfig, *, first: Collection[Role] | None = None, rest: Literal["after", "together"] = "after") -> WorkerPool:
        """The pool of ``config``'s roles (``first`` and ``rest``: as :meth:`start`)."""
        specs = [backend_spec(role, rc) for role, rc in config.roles.items()]
        affinity = AffinityConfig(
            block=config.affinity_block, min_match_blocks=config.affinity_min_blocks, max_imbalance=config.affinity_max_imbalance
        )
        return await cls.start(specs, call_timeout_s=config.call_timeout_s, affinity=affinity, first=first, rest=rest)

    # ------------------------------------------------------------------------------------------ routing

    def roles(self) -> frozenset[Role]:
        return frozenset(self._replicas)

    def replica_names(self, role: Role) -> list[str]:
        return [r.name for r in self._group(role)]

    def replica(self, name: str) -> Backend:
        return self._by_name[name]

    def _group(self, role: Role) -> list[Backend]:
        group = self._replicas.get(role)
        if not group:
            raise EngineUnavailable(f"no worker serves role {role!r}; served: {sorted(self._replicas)}")
        return group

    def status(self) -> list[EngineStatus]:
        """Every replica's state (loading, ready, failed), in the order the roles were configured."""
        now = time.perf_counter() - self._t0
        return [
            EngineStatus(name=r.name, role=role, state=self._state[r.name], since_s=round(self._since.get(r.name, now), 1), error=self._errors.get(r.name, ""))
            for role, group in self._replicas.items()
            for r in group
        ]

    def role_state(self, role: Role) -> EngineState | None:
        """``ready`` once one replica of ``role`` is, ``loading`` while none is but one may still be, else
        ``failed``; None when no replica serves it."""
        states = {self._state[r.name] for r in self._replicas.get(role, ())}
        return None if not states else "ready" if "ready" in states else "loading" if "loading" in states else "failed"

    def _ready_group(self, role: Role) -> list[Backend]:
        """The replicas of ``role`` that can take a call now; refused, typed, while none can."""
        group = self._group(role)
        ready = [r for r in group if self._state[r.name] == "ready"]
        if ready:
            return ready
        if self.role_state(role) == "loading":
            raise EngineLoading(f"role {role!r} is still loading its engine", retry_after=self.retry_after(role))
        errors = "; ".join(f"{r.name}: {self._errors.get(r.name, 'failed')}" for r in group)
        raise EngineUnavailable(f"role {role!r} failed to start ({errors})")

    def retry_after(self, role: Role) -> float:
        """Seconds a caller may wait before ``role`` is ready, at least 5: twice the longest load of an engine
        already ready (the roles behind the policy begin when it is ready and take about as long), less the
        time loading has taken so far; 60 s from the start while none is ready."""
        took = [self._since[n] for n, s in self._state.items() if s == "ready" and n in self._since]
        elapsed = time.perf_counter() - self._t0
        return float(max(5, round((max(took) if took else 30.0) * 2 - elapsed)))

    @contextmanager
    def _placed(self, role: Role, prompt: str | Sequence[int], request_id: str, exclude: Sequence[str] = ()) -> Iterator[Backend]:
        """Route one call and count it against its replica (load, abort map) while it runs."""
        ready = [r.name for r in self._ready_group(role)]
        loading = [n for n in self._routers[role].replicas if n not in ready]
        # Never a replica still loading: a retry with every ready replica tried goes to one of them again (as a
        # role of one replica retries on it, restarted by Ray), not to one that would first load its model.
        exclude = [*exclude, *loading] if set(ready) - set(exclude) else loading
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

    async def _dispatch(self, role: Role, prompt: str | Sequence[int], request_id: str, call: Callable[[Backend], Awaitable[T]]) -> T:
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
        spec, rid = _with_id(spec)
        return await self._dispatch(role, spec.prompt, rid, lambda r: r.generate(spec))

    async def stream(self, role: Role, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        """Partial outputs as they are produced, within the call deadline. A stream whose worker dies before
        its first part is retried once on another replica, as a call is; once a part has been passed on it
        is not (the caller may already have acted on it)."""
        spec, rid = _with_id(spec)
        tried: list[str] = []
        deadline = asyncio.get_running_loop().time() + self.call_timeout_s
        while True:
            with self._placed(role, spec.prompt, rid, exclude=tried) as replica:
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
                    self._after_death(role, err, tried, rid, retry=not started)

    async def abort(self, request_ids: Sequence[str]) -> None:
        """Abort running calls by request id (unknown or finished ids are ignored)."""
        by_replica: dict[str, list[str]] = {}
        for rid in request_ids:
            replica = self._running.get(rid)
            if replica is not None:
                by_replica.setdefault(replica.name, []).append(rid)
        await asyncio.gather(*(self._by_name[name].abort(ids) for name, ids in by_replica.items()))

    async def score(self, role: Role, spec: ScoreSpec) -> Scores:
        spec, rid = _with_id(spec)
        return await self._dispatch(role, spec.prompt, rid, lambda r: r.score(spec))

    async def classify_tokens(self, role: Role, spec: ScoreSpec) -> TokenClasses:
        """Per-position class probabilities from the pooling model serving ``role`` (a pooling PRM)."""
        spec, rid = _with_id(spec)
        return await self._dispatch(role, spec.prompt, rid, lambda r: r.classify_tokens(spec))

    async def tokenize(self, role: Role, text: str) -> list[int]:
        return await self._dispatch(role, "", uuid.uuid4().hex, lambda r: r.tokenize(text))

    async def render_chat(self, role: Role, messages: Sequence[dict[str, str]]) -> str:
        return await self._dispatch(role, "", uuid.uuid4().hex, lambda r: r.render_chat(messages))

    async def embed(self, role: Role, texts: Sequence[str]) -> list[list[float]]:
        return await self._dispatch(role, "", uuid.uuid4().hex, lambda r: r.embed(texts))

    async def stats(self, role: Role | None = None) -> list[EngineStats]:
        """A snapshot per replica of ``role``, or of every engine's ready replicas when None (the embedder is no
        engine: it has no stats)."""
        group = self._group(role) if role else [
            r for served, g in self._replicas.items() if served != "embedder" for r in g if self._state[r.name] == "ready"
        ]
        return list(await asyncio.gather(*(r.stats() for r in group)))

    async def shutdown(self) -> None:
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
        # All at once: each engine takes seconds to stop (its engine-core process, then its actor), and one after
        # another they added up to 10 s of a 4-engine service's stop.
        await asyncio.gather(*(replica.shutdown() for group in self._replicas.values() for replica in group))
        self._replicas = {}
        self._by_name = {}


S = TypeVar("S", SamplingSpec, ScoreSpec)


def _with_id(spec: S) -> tuple[S, str]:
    """The spec with a request id (a fresh one when it has none), so that the call can be aborted; and the id."""
    if spec.request_id:
        return spec, spec.request_id
    rid = uuid.uuid4().hex
    return replace(spec, request_id=rid), rid
