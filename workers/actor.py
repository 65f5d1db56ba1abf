"""Backends whose engine lives in a Ray actor: the actor (:class:`EngineActor`, which runs any call of
:data:`workers.backend.CALLS` on the engine it holds), the backend that reaches it (:class:`ActorBackend`, one
generic path for every call, coalescing those made in one event-loop turn), where Ray puts the actor, and Ray's
failures as typed errors. A backend in a Ray actor is a class with the engine's calls and a spec that builds
:func:`actor_backend` over it; nothing here changes for a new backend or a new kind of call."""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Collection, Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

from orchestrator.errors import EngineError, EngineUnavailable, TTSError, WorkerDied
from workers.backend import CALLS, Backend, Unsupported


@dataclass(frozen=True)
class Placement:
    """Ray resources of one replica's actor. ``resources`` are custom Ray resources (pin a role to the nodes
    that offer them)."""

    num_cpus: float = 0.25  # the actor mostly waits; its engine-core process does the work
    num_gpus: float = 0.0
    resources: tuple[tuple[str, float], ...] = ()

    @property
    def shares_devices(self) -> bool:
        """A fraction of a GPU: other replicas may load onto the same device."""
        return 0 < self.num_gpus < 1

    def actor_options(self, name: str, *, tag: str, max_restarts: int) -> dict[str, Any]:
        """Options for ``ActorClass.options`` shared by every actor backend."""
        return {
            "name": f"tts-{tag}-{name}",
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": dict(self.resources),
            "max_restarts": max_restarts,
            # Replicas of a role on different nodes where it can: one node's loss then takes one replica.
            "scheduling_strategy": "SPREAD",
        }


def _as_error(err: BaseException, worker: str) -> BaseException:
    """An exception a batched call ended with, as the caller gets it: the service's typed errors as raised, any
    other as an :class:`EngineError` with its last line (what a single call's ``RayTaskError`` maps to)."""
    if isinstance(err, TTSError):
        return err
    if isinstance(err, asyncio.CancelledError):
        return EngineError("call was cancelled", worker=worker)
    lines = str(err).strip().splitlines()
    return EngineError(lines[-1] if lines else type(err).__name__, worker=worker)


def _outcome(task: asyncio.Future[Any], worker: str) -> Any:
    """A finished task's result, or the exception it ended with as its caller gets it (:func:`_as_error`)."""
    if task.cancelled():
        return _as_error(asyncio.CancelledError(), worker)
    err = task.exception()
    return task.result() if err is None else _as_error(err, worker)


def served_calls(engine: type) -> frozenset[str]:
    """The calls of :data:`workers.backend.CALLS` that ``engine`` (the class an actor holds) has a method for."""
    return frozenset(call for call in CALLS if callable(getattr(engine, call, None)))


class EngineActor:
    """What runs in the Ray actor of a replica (an async actor: its calls share one event loop): it holds the
    object ``build()`` returns (a ``VllmEngine``, an ``InstantEngine``, a ``SentenceEmbedder``) and runs the
    calls of :data:`workers.backend.CALLS` on it by name. ``call`` runs one, ``stream`` a streaming one,
    ``batch`` several at once (coalesced calls, each as the task it would have been as a call of its own),
    ``cancel`` some of those by key, as ``ray.cancel`` cancels a call of its own. A name that is not in
    ``CALLS``, or that the held object has no method for, fails with :class:`EngineUnavailable`.

    The held object is built lazily inside the actor's loop, so a restarted actor (Ray re-runs ``__init__``)
    reloads its model on the first call. A call that raises :class:`WorkerDied` (its engine died) ends the
    actor after its error is returned, so that Ray restarts it. The held object's calls may be coroutines or
    plain functions (a ``VllmEngine`` tokenises synchronously)."""

    _CANCELLED_EARLY_KEEP = 10_000

    def __init__(self, build: Callable[[], object], name: str) -> None:
        self._build = build
        self._name = name
        self._engine: object | None = None
        self._lock: asyncio.Lock | None = None
        self._calls = 0
        self._running: dict[str, asyncio.Future[Any]] = {}  # batched calls by key, for `cancel`
        self._cancelled_early: OrderedDict[str, None] = OrderedDict()

    async def _ready(self) -> object:
        if self._engine is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._engine is None:
                    self._engine = self._build()
        return self._engine

    async def _served(self, method: str, *, stream: bool) -> Callable[..., Any]:
        travel = CALLS.get(method)
        bound = getattr(await self._ready(), method, None) if travel is not None and (travel == "stream") == stream else None
        if not callable(bound):
            raise EngineUnavailable(f"does not serve `{method}` calls", worker=self._name)
        if travel in ("coalesced", "stream"):
            self._calls += 1
        return bound

    def _die_soon(self) -> None:
        # Return the typed error first, then exit so that Ray restarts this actor with a fresh engine.
        asyncio.get_running_loop().call_later(0.5, os._exit, 1)

    async def start(self) -> str:
        await self._ready()
        return self._name

    async def call(self, method: str, *args: Any) -> Any:
        """The held object's ``method(*args)``: the one entry point of every call but a stream."""
        bound = await self._served(method, stream=False)
        try:
            out = bound(*args)
            return await out if inspect.isawaitable(out) else out
        except WorkerDied:
            self._die_soon()
            raise

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        """The held object's streaming ``method(*args)``, as it yields."""
        bound = await self._served(method, stream=True)
        try:
            async for item in bound(*args):
                yield item
        except WorkerDied:
            self._die_soon()
            raise

    async def batch(self, calls: Sequence[tuple[str, str, tuple[Any, ...]]]) -> AsyncIterator[list[tuple[int, Any]]]:
        """``(key, method, args)`` calls, run at once; yields ``(position, result or the exception it raised)``
        for the calls that have ended, as they end (those ending together in one yield), so that the first of a
        race reaches its caller while the others still run: a batch that answered when its slowest call did
        would let First Finish Search abort nothing."""
        keys: list[str] = []
        tasks: dict[asyncio.Future[Any], int] = {}
        for i, (key, method, args) in enumerate(calls):
            task: asyncio.Future[Any] = asyncio.ensure_future(self.call(method, *args))
            if key in self._cancelled_early:  # its cancel arrived before the batch did: it never starts
                del self._cancelled_early[key]
                task.cancel()
            self._running[key] = task
            keys.append(key)
            tasks[task] = i
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                yield [(tasks[t], _outcome(t, self._name)) for t in sorted(done, key=tasks.__getitem__)]
        finally:
            for t in pending:  # the caller went away: nothing is waiting for these
                t.cancel()
            for key in keys:
                self._running.pop(key, None)

    async def cancel(self, keys: Sequence[str]) -> None:
        """Cancel batched calls by key (their engine requests are aborted, as a cancelled call's are)."""
        for key in keys:
            task = self._running.get(key)
            if task is not None:
                task.cancel()
            else:  # not arrived yet (or already done): remember it for a little while
                self._cancelled_early[key] = None
                while len(self._cancelled_early) > self._CANCELLED_EARLY_KEEP:
                    self._cancelled_early.popitem(last=False)

    def calls(self) -> int:
        """Engine calls begun here (the coalesced ones and streams: generate, stream, score, ...) since the
        actor started; what benchmarks compare with the ledger's rows."""
        return self._calls

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    async def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        stop = getattr(engine, "shutdown", None)
        if callable(stop):
            out = stop()
            if inspect.isawaitable(out):
                await out


SHUTDOWN_WAIT_S = 10.0  # how long an engine may take to stop gracefully before its actor is killed


class _Pending:
    """One call waiting for its turn's batch to be sent."""

    __slots__ = ("key", "call", "args", "fut", "ref")

    def __init__(self, key: str, call: str, args: tuple[Any, ...], fut: asyncio.Future[Any]) -> None:
        self.key, self.call, self.args, self.fut = key, call, args, fut
        self.ref: ray.ObjectRef | None = None  # set when sent as a call of its own


def _settle(p: _Pending, outcome: Any) -> None:
    """Answer one call's caller with its result or error (unless its caller left)."""
    if p.fut.done():
        return
    if isinstance(outcome, BaseException):
        p.fut.set_exception(outcome)
    else:
        p.fut.set_result(outcome)


def _fail(pending: Sequence[_Pending], err: BaseException) -> None:
    """Fail every open call of ``pending`` with ``err`` (each caller raises its own copy), or cancel them."""
    for i, p in enumerate(pending):
        if not p.fut.done():
            if isinstance(err, asyncio.CancelledError):
                p.fut.cancel()
            else:
                p.fut.set_exception(err if i == 0 else copy.copy(err))


class ActorBackend(Unsupported):
    """:class:`workers.backend.Backend` over the :class:`EngineActor` ``handle``: every call of
    :data:`workers.backend.CALLS` in ``serves`` goes to the actor as its entry says (:meth:`_forward`); the
    others are refused here, as :class:`Unsupported` refuses them.

    Coalesced calls made to this backend in one event-loop turn (the n scoring calls of a beam step, a step's
    generate calls, started together by ``gather``) go to the actor as one ``batch`` call, one Ray round trip
    instead of one each; a call alone in its turn goes as a call of its own. Each call still returns (or
    raises) its own result, so everything above the backend (accounting, one ledger row per sub-call,
    retries, deadlines) is as for separate calls."""

    _keys = itertools.count()
    _key_prefix = f"{os.getpid()}-{id(object()):x}-"

    def __init__(self, name: str, handle: ray.actor.ActorHandle, *, serves: Collection[str]) -> None:
        self.name = name
        self.handle = handle  # tests and benchmarks kill or probe the actor through it
        self.serves = frozenset(serves)
        self._pending: list[_Pending] = []
        self._delivering: set[asyncio.Future[None]] = set()

    async def _forward(self, call: str, args: tuple[Any, ...]) -> Any:
        """``call(*args)`` on the actor's engine, travelling as ``CALLS[call]`` says."""
        travel = CALLS[call]
        if travel == "coalesced":
            return await self._batched(call, args)
        if travel == "abort" and self._pending:
            self._flush()  # calls of this turn not sent yet go first, so that the abort finds them
        return await self._call(self.handle.call.remote(call, *args))

    async def _stream(self, call: str, args: tuple[Any, ...]) -> AsyncIterator[Any]:
        gen: ray.ObjectRefGenerator = self.handle.stream.options(num_returns="streaming").remote(call, *args)
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

    async def _batched(self, call: str, args: tuple[Any, ...]) -> Any:
        """``handle.call.remote(call, *args)``'s result, sent together with the other calls of this turn."""
        loop = asyncio.get_running_loop()
        item = _Pending(f"{self._key_prefix}{next(self._keys)}", call, args, loop.create_future())
        self._pending.append(item)
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        try:
            return await item.fut
        except asyncio.CancelledError:
            # As for a call of its own: cancelling the awaiting task stops the engine's work on it.
            if item in self._pending:
                self._pending.remove(item)  # not sent yet
            elif item.ref is not None:
                ray.cancel(item.ref)
            else:
                self.handle.cancel.remote([item.key])
            raise

    def _flush(self) -> None:
        batch = [p for p in self._pending if not p.fut.done()]
        self._pending = []
        if len(batch) == 1:
            one = batch[0]
            one.ref = self.handle.call.remote(one.call, *one.args)
            task = asyncio.ensure_future(self._deliver_one(one, one.ref))
        elif batch:
            gen = self.handle.batch.options(num_returns="streaming").remote([(p.key, p.call, p.args) for p in batch])
            task = asyncio.ensure_future(self._deliver(batch, gen))
        else:
            return
        self._delivering.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._delivering.discard)

    async def _deliver_one(self, p: _Pending, ref: ray.ObjectRef) -> None:
        try:
            _settle(p, await self._call(ref))
        except BaseException as err:
            _fail([p], err)
            if isinstance(err, asyncio.CancelledError):
                raise

    async def _deliver(self, batch: list[_Pending], gen: Any) -> None:
        """Each call's result as the actor's ``batch`` yields it (a call's caller is answered when its own call
        ends, not when the batch's slowest does)."""
        try:
            try:
                async for ref in gen:
                    for i, o in await self._call(ref):
                        _settle(batch[i], o)
            except RayActorError as err:
                raise WorkerDied(f"worker process died mid-call ({type(err).__name__})", worker=self.name) from None
        except BaseException as err:  # the stream failed (the worker died, ...): every call still open did
            _fail([p for p in batch if not p.fut.done()], err)
            if isinstance(err, asyncio.CancelledError):
                raise
        _fail([p for p in batch if not p.fut.done()], EngineError("the batch ended without this call's result", worker=self.name))

    async def _call(self, ref: ray.ObjectRef) -> Any:
        """The result of one actor call, with Ray's failures turned into the service's typed errors."""
        try:
            return await ref
        except asyncio.CancelledError:
            # Cancelling the awaiting task must stop the engine's work: cancel the actor's coroutine, which
            # aborts the vLLM request.
            ray.cancel(ref)
            raise
        except RayTaskError as err:
            # The worker's own typed error, as it was raised there: its message, not Ray's traceback text.
            if isinstance(err.cause, TTSError):
                raise err.cause from None
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
        await self._call(self.handle.start.remote())

    async def shutdown(self) -> None:
        try:
            # Bounded: an actor still building its engine runs nothing else until it is built (minutes on a
            # first start), and a service stopped while loading (Ctrl-C) should not wait for that.
            async with asyncio.timeout(SHUTDOWN_WAIT_S):
                await self.handle.shutdown.remote()
        except (RayActorError, TimeoutError):
            pass  # already gone, or busy loading: the kill below stops it either way
        ray.kill(self.handle, no_restart=True)


def _forwarder(call: str) -> Callable[..., Any]:
    """:class:`ActorBackend`'s method for ``call``: the protocol's signature and promise, the one generic path
    (:meth:`ActorBackend._forward`) as its body, :class:`Unsupported`'s refusal where the engine lacks it."""
    promised = getattr(Backend, call)
    signature = inspect.signature(promised)
    refuse = getattr(Unsupported, call)

    def positional(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        return signature.bind(None, *args, **kwargs).args[1:] if kwargs else args

    if CALLS[call] == "stream":

        async def forward_stream(self: ActorBackend, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            args = positional(args, kwargs)
            source = self._stream(call, args) if call in self.serves else refuse(self, *args)
            async for item in source:
                yield item

        method: Callable[..., Any] = forward_stream
    else:

        async def forward(self: ActorBackend, *args: Any, **kwargs: Any) -> Any:
            args = positional(args, kwargs)
            if call not in self.serves:
                return await refuse(self, *args)
            return await self._forward(call, args)

        method = forward
    method.__name__ = call
    method.__qualname__ = f"ActorBackend.{call}"
    method.__doc__ = promised.__doc__
    method.__signature__ = signature  # type: ignore[attr-defined]
    return method


# One method per call, each from the same path: a new call of Backend reaches every actor backend from its
# line in CALLS, with nothing written here.
for _name in CALLS:
    setattr(ActorBackend, _name, _forwarder(_name))


_RemoteEngineActor = ray.remote(EngineActor)


def spawn_engine_actor(build: Callable[[], object], name: str, /, **options: Any) -> ray.actor.ActorHandle:
    """A new Ray actor running :class:`EngineActor` over ``build``, its replica called ``name`` (``options``: Ray's
    actor options, whose own ``name`` is the actor's name in the cluster)."""
    return _RemoteEngineActor.options(**options).remote(build, name)


def actor_backend(
    name: str,
    build: Callable[[], object],
    *,
    serves: Collection[str],
    placement: Placement,
    tag: str,
    max_restarts: int,
    max_concurrency: int = 1000,
) -> ActorBackend:
    """The backend ``name`` over a new engine actor holding ``build()``, placed by ``placement``; of the calls,
    it forwards ``serves`` (see :func:`served_calls`) and refuses the others without asking the actor."""
    handle = spawn_engine_actor(
        build,
        name,
        **placement.actor_options(name, tag=tag, max_restarts=max_restarts),
        max_concurrency=max_concurrency,
        max_task_retries=0,  # the pool decides about retries: it knows which calls are safe to repeat
    )
    return ActorBackend(name, handle, serves=serves)
