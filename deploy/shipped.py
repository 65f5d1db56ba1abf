"""Calibration sets shipped with a draft model, so ``atts`` answers on a fresh install.

A conformal calibration set is a property of a (draft, target) pair of weights and of the chunking it scores
(ATTS's ``line`` or ``reference`` mode). The bundled pair's sets are built once by ``python -m deploy.calibrate
--problems 200 --n 1 --seed 3 --export models/draft/calibration.json`` (line chunks) and the same with ``--mode
reference --export models/draft/calibration-tokens32.json`` (32-token chunks), and shipped; the service seeds
its database with every ``calibration*.json`` of the draft on start, only when the served weights are those it
was built on (a digest of each model's safetensors), so a retrained or replaced model never inherits a stale set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from orchestrator.db.store import Store
from strategies import atts


def weights_digest(model_dir: Path) -> str:
    """A short digest of a model directory's weights: a shipped calibration set belongs to exactly these weights."""
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class ShippedCalibration(BaseModel):
    """A calibration set shipped next to a draft model (``<draft>/calibration.json``): the service seeds its
    database with it on start when the served draft and policy have exactly the weights it was built on."""

    dataset: str
    chunking: str = "line"  # atts.Params.chunking of the chunks scored (files from before chunkings: line)
    draft_weights: str
    target_weights: str
    made_by: str
    scores: list[float]


async def seed_shipped(store: Store, *, draft: Path | None, target: Path | None, draft_name: str, target_name: str) -> str | None:
    """Seed every calibration set shipped with ``draft`` (``calibration*.json``; served as ``draft_name`` for the
    policy ``target_name``) that the database lacks, when the weights match; returns what was done, for the log
    (None: nothing)."""
    if draft is None or target is None:
        return None
    files = sorted(draft.glob("calibration*.json"))
    if not files:
        return None
    served = (weights_digest(draft), weights_digest(target))
    notes = [note for f in files if (note := await _seed_one(store, f, served, draft_name, target_name))]
    return "; ".join(notes) or None


async def _seed_one(store: Store, file: Path, served: tuple[str, str], draft_name: str, target_name: str) -> str | None:
    shipped = ShippedCalibration.model_validate_json(file.read_text())
    name = atts.calibration_name(draft_name, target_name, shipped.dataset, shipped.chunking)
    if served != (shipped.draft_weights, shipped.target_weights):
        return f"not seeding calibration set {name!r}: {file} was built for other weights (run python -m deploy.calibrate)"
    if len(await store.calibration.scores(name)) >= atts.MIN_CALIBRATION:
        return None
    size = await store.calibration.add_scores(name, scores=shipped.scores, model=f"{draft_name}->{target_name}", keep=atts.CALIBRATION_WINDOW, replace=True)
    return f"seeded ATTS calibration set {name!r} with the {size} scores shipped in {file}"
