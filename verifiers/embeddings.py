"""Step embeddings and clustering, for strategies that keep semantically different branches (ETS).

Two clusterers: :class:`StepClusterer` embeds steps with the pool's `embedder` role (a sentence-transformers
model in a Ray actor); :class:`LexicalClusterer` needs no model: TF-IDF vectors of the steps' character n-grams,
which separate steps that differ in a number where a sentence embedder trained on prose sees one sentence.
Either way clustering is scipy's agglomerative clustering on cosine distance, cut where clusters stop being
closer than ``threshold``. Each clusterer's default threshold is calibrated for its vectors by
``python -m bench.ets_threshold`` (hand-written R1-style steps in three phrasings each: the threshold that best
separates paraphrase pairs from pairs of different steps of the same problem): the reference ETS's 0.05 was
tuned for its math embedder, and with all-MiniLM-L6-v2 it merges no paraphrase at all.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from orchestrator.errors import InvalidRequest
from orchestrator.protocols import Engine
from orchestrator.types import Role


def cluster_vectors(vectors: np.ndarray, *, threshold: float = 0.15, method: str = "average") -> list[int]:
    """Cluster labels 0..k-1 in order of first appearance; ``threshold`` is the largest cosine distance
    (1 - cosine similarity) at which two clusters are still merged."""
    n = len(vectors)
    if n == 0:
        return []
    if n == 1:
        return [0]
    if not 0 <= threshold <= 2:
        raise InvalidRequest(f"cluster threshold {threshold} outside [0, 2] (cosine distance)", param="threshold")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    raw = fcluster(linkage(unit, method=method, metric="cosine"), t=threshold, criterion="distance")
    first: dict[int, int] = {}
    return [first.setdefault(int(c), len(first)) for c in raw]


# Calibrated by bench.ets_threshold (bench/results/ets_threshold.json): balanced accuracy 0.84 (embedder) and
# 0.77 (lexical) between paraphrases and different steps; 0.05 scores 0.5 for both (nothing merges).
EMBEDDER_THRESHOLD = 0.27  # all-MiniLM-L6-v2: paraphrases median 0.20, different steps of a problem median 0.43
LEXICAL_THRESHOLD = 0.74  # TF-IDF character 2-4-grams: paraphrases median 0.64, different steps median 0.82
BLANK = "(blank)"  # what a whitespace-only step reads as to the lexical clusterer


class LexicalClusterer:
    """The :class:`~orchestrator.protocols.StepClustering` protocol without a model (``engine`` is not used):
    steps as TF-IDF vectors of their character ``ngrams`` (within words), fitted on the texts being clustered."""

    def __init__(self, ngrams: tuple[int, int] = (2, 4), *, threshold: float = LEXICAL_THRESHOLD) -> None:
        self.ngrams = ngrams
        self.threshold = threshold

    async def clusters(self, engine: Engine | None, texts: Sequence[str], threshold: float) -> list[int]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not texts:
            return []
        # A blank step has no n-grams, so its vector would be zero and its cosine distance undefined (scipy then
        # refuses the whole set): blank steps all read as one placeholder word, alike, and unlike any real step.
        padded = [t if t.strip() else BLANK for t in texts]
        try:
            vectors = TfidfVectorizer(analyzer="char_wb", ngram_range=self.ngrams, lowercase=False).fit_transform(padded)
        except ValueError:  # no n-gram at all (every text blank): equal texts are one cluster
            first: dict[str, int] = {}
            return [first.setdefault(t, len(first)) for t in padded]
        return cluster_vectors(vectors.toarray(), threshold=threshold)


class StepClusterer:
    """Steps embedded by the pool's `embedder` role. ``threshold``: calibrated for the packaged all-MiniLM-L6-v2;
    another embedder needs its own (``python -m bench.ets_threshold`` measures one)."""

    def __init__(self, engine: Engine, *, role: Role = "embedder", threshold: float = EMBEDDER_THRESHOLD) -> None:
        self.engine = engine
        self.role = role
        self.threshold = threshold

    async def embed(self, texts: Sequence[str], *, engine: Engine | None = None) -> np.ndarray:
        engine = engine or self.engine
        return np.asarray(await engine.embed(self.role, list(texts)), dtype=float).reshape(len(texts), -1)

    async def cluster(self, texts: Sequence[str]) -> list[int]:
        """A cluster label per text: equal labels mean the steps say the same thing."""
        return await self.clusters(self.engine, texts, self.threshold)

    async def clusters(self, engine: Engine, texts: Sequence[str], threshold: float) -> list[int]:
        """The :class:`~orchestrator.protocols.StepClustering` protocol: embeddings from ``engine``'s role."""
        if not texts:
            return []
        return cluster_vectors(await self.embed(texts, engine=engine), threshold=threshold)
