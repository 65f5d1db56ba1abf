"""ATTS calibration sets: named, bounded windows of conformal scores, appended to online. ``Calibration``
is what strategies get as ``ctx.calibration`` (it satisfies ``orchestrator.protocols.CalibrationStore``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestrator.db.base import Repository, insert_ignore
from orchestrator.db.models import CalibrationSet
from orchestrator.db.views import CalibrationSetRow, calibration_set_row


class Calibration(Repository):
    async def scores(self, name: str) -> list[float]:
        """The scores of calibration set ``name``, oldest first (empty when there is none)."""
        q = select(CalibrationSet).where(CalibrationSet.name == name)
        return await self._read(lambda s: _scores(s.scalar(q)))

    async def add_scores(self, name: str, *, scores: Sequence[float], model: str, keep: int, replace: bool = False) -> int:
        """Append ``scores`` to set ``name`` (created if missing; emptied first when ``replace``), keeping its
        newest ``keep``; returns the set's size. Safe against concurrent updates, from other processes too."""
        new = [float(x) for x in scores]
        empty = {"id": uuid.uuid4().hex, "name": name, "model": model, "data": {}, "created_at": datetime.now(timezone.utc)}
        # Its own transaction first: the locking update below can only find a set that is committed.
        await self._write(lambda s: insert_ignore(s, CalibrationSet, empty))

        def append(s: Session) -> int:
            # Write before reading: the write lock (PostgreSQL's row lock, SQLite's database lock) is held from
            # here to commit, so no other update can slip in between this read and this write.
            s.execute(update(CalibrationSet).where(CalibrationSet.name == name).values(model=model))
            cs = s.scalars(select(CalibrationSet).where(CalibrationSet.name == name)).one()
            kept = (([] if replace else _scores(cs)) + new)[-keep:]
            cs.data = {"scores": kept, "updated_at": datetime.now(timezone.utc).isoformat()}  # a new dict: JSON columns track assignment
            return len(kept)

        return await self._write(append)

    async def sets(self) -> list[CalibrationSetRow]:
        """Every calibration set, by name."""
        q = select(CalibrationSet).order_by(CalibrationSet.name)
        return await self._read(lambda s: [calibration_set_row(c) for c in s.scalars(q)])


def _scores(cs: CalibrationSet | None) -> list[float]:
    return [float(x) for x in cs.data.get("scores", [])] if cs is not None else []
