"""The calibration set shipped with a draft model seeds the database only for the weights it was built on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from deploy.shipped import ShippedCalibration, seed_shipped, weights_digest
from orchestrator.db.store import Store


def model_dir(root: Path, name: str, weights: bytes) -> Path:
    d = root / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(weights)
    return d


def test_seeds_once_for_matching_weights_and_never_for_others(tmp_path):
    draft, target = model_dir(tmp_path, "draft", b"d" * 64), model_dir(tmp_path, "target", b"t" * 64)
    shipped = ShippedCalibration(
        dataset="task", draft_weights=weights_digest(draft), target_weights=weights_digest(target), made_by="test", scores=[float(i) for i in range(30)]
    )
    (draft / "calibration.json").write_text(shipped.model_dump_json())
    store = Store.from_url(f"sqlite:///{tmp_path / 'tts.db'}")

    def seed(draft_name: str = "draft", target_name: str = "target") -> str | None:
        return asyncio.run(seed_shipped(store, draft=draft, target=target, draft_name=draft_name, target_name=target_name))

    try:
        assert "seeded ATTS calibration set 'draft->target/task' with the 30 scores" in seed()
        assert asyncio.run(store.calibration.scores("draft->target/task")) == shipped.scores
        assert seed() is None  # already there: left alone (requests append to it)
        assert "with the 30 scores" in seed(draft_name="d2", target_name="policy")  # named as this server serves them
        (target / "model.safetensors").write_bytes(b"retrained")
        assert "built for other weights" in seed(draft_name="d3", target_name="t3")
        assert asyncio.run(store.calibration.scores("d3->t3/task")) == []
        assert asyncio.run(seed_shipped(store, draft=target, target=draft, draft_name="x", target_name="y")) is None  # no file
    finally:
        store.engine.dispose()


def test_every_shipped_chunking_is_seeded_under_its_own_name(tmp_path):
    draft, target = model_dir(tmp_path, "draft", b"d" * 64), model_dir(tmp_path, "target", b"t" * 64)
    digests = {"draft_weights": weights_digest(draft), "target_weights": weights_digest(target)}
    line = ShippedCalibration(dataset="task", made_by="test", scores=[1.0] * 30, **digests)  # a file from before chunkings
    tokens = ShippedCalibration(dataset="task", chunking="tokens32", made_by="test", scores=[2.0] * 25, **digests)
    (draft / "calibration.json").write_text(line.model_dump_json(exclude={"chunking"}))
    (draft / "calibration-tokens32.json").write_text(tokens.model_dump_json())
    store = Store.from_url(f"sqlite:///{tmp_path / 'tts.db'}")
    try:
        note = asyncio.run(seed_shipped(store, draft=draft, target=target, draft_name="draft", target_name="target"))
        assert "'draft->target/task' with the 30 scores" in note and "'draft->target/task@tokens32' with the 25 scores" in note
        assert asyncio.run(store.calibration.scores("draft->target/task@tokens32")) == tokens.scores
        assert asyncio.run(store.calibration.scores("draft->target/task")) == line.scores
    finally:
        store.engine.dispose()


def test_the_bundled_pair_ships_both_chunkings():
    root = Path(__file__).resolve().parent.parent / "models"
    sets = {f.name: ShippedCalibration.model_validate_json(f.read_text()) for f in sorted((root / "draft").glob("calibration*.json"))}
    assert {n: s.chunking for n, s in sets.items()} == {"calibration-tokens32.json": "tokens32", "calibration.json": "line"}
    for s in sets.values():
        assert (s.draft_weights, s.target_weights) == (weights_digest(root / "draft"), weights_digest(root / "target"))
        assert len(s.scores) >= 800
