"""What the backends that live in a Ray actor share: where Ray puts the actor, and Ray's failures as typed errors."""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

from orchestrator.errors import EngineError, TTSError, WorkerDied
from workers.backend import Unsupported


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


# The actor methods a backend may coalesce: calls made in one event-loop turn go to the actor as one `batch` call.
BATCHED_METHODS = frozenset({"generate", "score", "classify_tokens"})


def _as_error(err: BaseException, worker: str) -> BaseException:
    """An exception a batched call ended with, as the caller gets it: the service's typed errors as raised, any
    other as an :class:`EngineError` with its last line (what a single call's ``RayTaskError`` maps to)."""
    if isinstance(err, TTSError):
        return err
    if isinstance(err, asyncio.CancelledError):
        return EngineError("call was cancelled", worker=worker)
    lines = str(err).strip().splitlines()
    return EngineError(lines[-1] if lines else type(err).__name__, worker=worker)


class BatchedCalls:
    """Actor side of coalesced calls (mixed into the engine actors): ``batch`` runs several of the actor's own
    calls concurrently, each as the task it would have been as a call of its own, and returns each one's result
    or exception; ``cancel`` cancels some of them by key, as ``ray.cancel`` cancels a call of its own."""

    _name: str
    _CANCELLED_EARLY_KEEP = 10_000

    def _batch_state(self) -> tuple[dict[str, asyncio.Future[Any]], OrderedDict[str, None]]:
        state = self.__dict__.get("_batch_tasks")
        if state is None:
            state = self.__dict__["_batch_tasks"] = ({}, OrderedDict())
        return state

    async def batch(self, calls: Sequence[tuple[str, str, Any]]) -> list[Any]:
        """``(key, method, argument)`` calls, run at once; per call its result, or the exception it raised."""
        running, early = self._batch_state()
        keys: list[str] = []
        tasks: list[asyncio.Future[Any]] = []
        for key, method, arg in calls:
            if method not in BATCHED_METHODS:
                raise ValueError(f"{method!r} cannot be batched")
            task: asyncio.Future[Any] = asyncio.ensure_future(getattr(self, method)(arg))
            if key in early:  # its cancel arrived before the batch did: it never starts
                del early[key]
                task.cancel()
            running[key] = task
            keys.append(key)
            tasks.append(task)
        try:
            done = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for key in keys:
                running.pop(key, None)
        return [_as_error(o, self._name) if isinstance(o, BaseException) else o for o in done]

    async def cancel(self, keys: Sequence[str]) -> None:
        """Cancel batched calls by key (their engine requests are aborted, as a cancelled call's are)."""
        running, early = self._batch_state()
        for key in keys:
            task = running.get(key)
            if task is not None:
                task.cancel()
            else:  # not arrived yet (or already done): remember it for a little while
                early[key] = None
                while len(early) > self._CANCELLED_EARLY_KEEP:
                    early.popitem(last=False)


class _Pending:
    """One call waiting for its turn's batch to be sent."""

    __slots__ = ("key", "method", "arg", "fut", "ref")

    def __init__(self, key: str, method: str, arg: Any, fut: asyncio.Future[Any]) -> None:
        self.key, self.method, self.arg, self.fut = key, method, arg, fut
        self.ref: ray.ObjectRef | None = None  # set when sent as a call of its own


class ActorBackend(Unsupported):
    """A backend whose engine lives in the Ray actor ``handle``; the actor offers ``start`` and ``shutdown``.

    :meth:`_batched` coalesces calls: those made to this backend in one event-loop turn (the n scoring calls
    of a beam step, a step's generate calls, started together by ``gather``) go to the actor as one
    ``batch`` call (:class:`BatchedCalls`), one Ray round trip instead of one each; a call alone in its turn
    goes as a call of its own. Each call still returns (or raises) its own result, so everything above the
    backend (accounting, one ledger row per sub-call, retries, deadlines) is as for separate calls."""

    _keys = itertools.count()
    _key_prefix = f"{os.getpid()}-{id(object()):x}-"

    def __init__(self, name: str, handle: ray.actor.ActorHandle) -> None:
        self.name = name
        self.handle = handle  # tests and benchmarks kill or probe the actor through it
        self._pending: list[_Pending] = []
        self._delivering: set[asyncio.Future[None]] = set()

    async def _batched(self, method: str, arg: Any) -> Any:
        """``handle.<method>.remote(arg)``'s result, sent together with the other calls of this turn."""
        loop = asyncio.get_running_loop()
        item = _Pending(f"{self._key_prefix}{next(self._keys)}", method, arg, loop.create_future())
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
            one.ref = ref = getattr(self.handle, one.method).remote(one.arg)
        elif batch:
            ref = self.handle.batch.remote([(p.key, p.method, p.arg) for p in batch])
        else:
            return
        task = asyncio.ensure_future(self._deliver(batch, ref))
        self._delivering.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._delivering.discard)

    async def _deliver(self, batch: list[_Pending], ref: ray.ObjectRef) -> None:
        try:
            out = await self._call(ref)
        except BaseException as err:  # the whole call failed (the worker died, ...): every call in it did
            for i, p in enumerate(batch):
                if not p.fut.done():
                    if isinstance(err, asyncio.CancelledError):
                        p.fut.cancel()
                    else:
                        p.fut.set_exception(err if i == 0 else copy.copy(err))  # each caller raises its own
            if isinstance(err, asyncio.CancelledError):
                raise
            return
        results = [out] if len(batch) == 1 else out
        for p, o in zip(batch, results):
            if p.fut.done():
                continue  # its caller left
            if isinstance(o, BaseException):
                p.fut.set_exception(o)
            else:
                p.fut.set_result(o)

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
            await self.handle.shutdown.remote()
        except RayActorError:
            pass  # already gone: nothing left to stop
        ray.kill(self.handle, no_restart=True)
