"""Which backend serves a role, decided by the role's configuration, and the building of its replicas."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Sequence

from orchestrator.errors import ConfigError
from orchestrator.types import Role
from workers.backend import Backend, BackendSpec
from workers.config import RoleConfig
from workers.embedder import EmbedderSpec
from workers.instant import InstantConfig, InstantSpec
from workers.local import LocalSpec
from workers.remote import RemoteSpec
from workers.synthetic import SCHEME as SYNTHETIC_SCHEME
from workers.synthetic import SyntheticSpec


def backend_spec(role: Role, rc: RoleConfig) -> BackendSpec:
    """The `embedder` role is always a local embedder actor (its ``url`` is not read); any other role is a
    remote `vllm serve` when it has a ``url``, a local vLLM engine otherwise. ``url = "instant:"`` (optionally
    ``"instant:?steps=6&answer=7"``) serves the role with :mod:`workers.instant` engines (control-plane
    benchmarks: Ray actors that answer at once; the role's ``model`` is never loaded). ``url = "synthetic:<preset>?..."``
    serves it with :mod:`workers.synthetic` engines (a simulated reasoning model on a modeled H100)."""
    if role == "embedder":
        return EmbedderSpec.from_config(role, rc)
    if rc.url is not None and rc.url.startswith(INSTANT_SCHEME):
        return InstantSpec.from_config(role, rc, config=instant_config(rc.url))
    if rc.url is not None and rc.url.startswith(SYNTHETIC_SCHEME):
        return SyntheticSpec.from_config(role, rc)
    if rc.url is not None:
        return RemoteSpec.from_config(role, rc)
    return LocalSpec.from_config(role, rc)


INSTANT_SCHEME = "instant:"


def instant_config(url: str) -> InstantConfig:
    """The instant engine's settings from ``instant:?steps=N&answer=M&max_model_len=L`` (each optional)."""
    from urllib.parse import parse_qsl, urlsplit

    fields = {f.name for f in dataclasses.fields(InstantConfig)}
    query = dict(parse_qsl(urlsplit(url).query))
    unknown = sorted(set(query) - fields)
    if unknown:
        raise ConfigError(f"{url!r}: unknown instant engine settings {unknown}; known: {sorted(fields)}")
    try:
        return InstantConfig(**{k: int(v) for k, v in query.items()})
    except ValueError:
        raise ConfigError(f"{url!r}: instant engine settings are whole numbers") from None


def build_backends(specs: Sequence[BackendSpec], *, max_restarts: int = 3) -> dict[Role, list[Backend]]:
    """Every replica of every spec, not started yet, named ``<role>-<index>``."""
    # Ray actor names are cluster-wide: the tag keeps two pools on one cluster (tests, restarts) apart.
    tag = uuid.uuid4().hex[:6]
    backends: dict[Role, list[Backend]] = {}
    for spec in specs:
        for i in range(spec.replicas):
            backends.setdefault(spec.role, []).append(spec.build(f"{spec.role}-{i}", i, tag=tag, max_restarts=max_restarts))
    return backends
