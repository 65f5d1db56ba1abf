"""Per-model prices, in dollars per million tokens (prompt, prompt served from the prefix cache, completion)."""

from __future__ import annotations

from sqlalchemy import select

from orchestrator.db.base import Repository
from orchestrator.db.models import Price


class Prices(Repository):
    async def set(self, model: str, *, prompt: float, cached: float, completion: float) -> None:
        """Set (or replace) the price of ``model``. Raises ``ValueError`` for a negative price."""
        for name, value in (("prompt", prompt), ("cached", cached), ("completion", completion)):
            if value < 0:
                raise ValueError(f"price {name} must be >= 0, got {value}")
        row = Price(model=model, prompt_per_mtok=prompt, cached_per_mtok=cached, completion_per_mtok=completion)
        await self._write(lambda s: s.merge(row))

    async def all(self) -> dict[str, tuple[float, float, float]]:
        """Every model's price as (prompt, cached, completion)."""
        return await self._read(lambda s: {p.model: (p.prompt_per_mtok, p.cached_per_mtok, p.completion_per_mtok) for p in s.scalars(select(Price))})
