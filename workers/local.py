"""The local backend: a vLLM engine (:class:`VllmEngine`) in a Ray actor (``workers.actor``), one per replica;
embedding is not served.

A replica that dies mid-call fails the call with :class:`WorkerDied` naming it; Ray restarts the actor (up to
``max_restarts``), whose engine reloads on its next call. If the vLLM engine dies the actor exits, so Ray
restarts it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from orchestrator.errors import ConfigError
from orchestrator.types import Role
from workers.actor import ActorBackend, Placement, actor_backend, served_calls
from workers.config import RoleConfig
from workers.engine import EngineConfig, VllmEngine

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

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> ActorBackend:
        config = replace(self.engine, seed=self.engine.seed + index)
        return actor_backend(
            name, partial(VllmEngine.create, config, name=name), serves=served_calls(VllmEngine),
            placement=self.placement, tag=tag, max_restarts=max_restarts,
        )
