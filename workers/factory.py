"""Which backend serves a role, decided by the role's configuration, and the building of its replicas."""

from __future__ import annotations

import uuid
from typing import Sequence

from orchestrator.types import Role
from workers.backend import Backend, BackendSpec
from workers.config import RoleConfig
from workers.embedder import EmbedderSpec
from workers.local import LocalSpec
from workers.remote import RemoteSpec


def backend_spec(role: Role, rc: RoleConfig) -> BackendSpec:
    """The `embedder` role is always a local embedder actor (its ``url`` is not read); any other role is a
    remote `vllm serve` when it has a ``url``, a local vLLM engine otherwise."""
    if role == "embedder":
        return EmbedderSpec.from_config(role, rc)
    if rc.url is not None:
        return RemoteSpec.from_config(role, rc)
    return LocalSpec.from_config(role, rc)


def build_backends(specs: Sequence[BackendSpec], *, max_restarts: int = 3) -> dict[Role, list[Backend]]:
    """Every replica of every spec, not started yet, named ``<role>-<index>``."""
    # Ray actor names are cluster-wide: the tag keeps two pools on one cluster (tests, restarts) apart.
    tag = uuid.uuid4().hex[:6]
    backends: dict[Role, list[Backend]] = {}
    for spec in specs:
        for i in range(spec.replicas):
            backends.setdefault(spec.role, []).append(spec.build(f"{spec.role}-{i}", i, tag=tag, max_restarts=max_restarts))
    return backends
