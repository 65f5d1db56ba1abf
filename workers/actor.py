"""What the backends that live in a Ray actor share: where Ray puts the actor, and Ray's failures as typed errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

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


class ActorBackend(Unsupported):
    """A backend whose engine lives in the Ray actor ``handle``; the actor offers ``start`` and ``shutdown``."""

    def __init__(self, name: str, handle: ray.actor.ActorHandle) -> None:
        self.name = name
        self.handle = handle  # tests and benchmarks kill or probe the actor through it

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
