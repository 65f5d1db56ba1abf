"""The sampling parameters every strategy takes, declared once.

A strategy's ``Params`` subclasses :class:`Sampling` and changes a default by re-annotating the field with
its type alias (``temperature: Temperature = 0.6``): the bounds travel with the alias, so they are never
re-declared, and a new description may be given with ``Field(0.6, description=...)``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.types import SamplingSpec

Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="Sampling temperature.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")]
MaxTokens = Annotated[int, Field(ge=1, le=4096, description="Most new tokens per sample.")]
Seed = Annotated[int | None, Field(description="Engine seed; None for fresh randomness.")]


class Sampling(BaseModel):
    """Temperature, nucleus mass, the token bound per sample and the engine seed; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    temperature: Temperature = 0.8
    top_p: TopP = 1.0
    max_tokens: MaxTokens = 256
    seed: Seed = None

    def seed_at(self, offset: int) -> int | None:
        """The seed of a call ``offset`` away from the request's (None when the request has none)."""
        return None if self.seed is None else self.seed + offset

    def sampling(self, prompt: str, *, n: int = 1, seed_offset: int = 0) -> SamplingSpec:
        """One engine call of ``n`` samples of ``prompt`` with these parameters."""
        return SamplingSpec(
            prompt=prompt, n=n, max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed_at(seed_offset)
        )
