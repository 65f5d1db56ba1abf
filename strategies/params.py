"""The sampling parameters every strategy takes, declared once.

A strategy's ``Params`` subclasses :class:`Sampling` and changes a default by re-annotating the field with
its type alias (``temperature: Temperature = 0.6``): the bounds travel with the alias, so they are never
re-declared, and a new description may be given with ``Field(0.6, description=...)``.

``max_tokens`` belongs to the served model: validated with the model's profile in the validation context
(``Params.model_validate(raw, context={"profile": profile})``, as the controller does), a request that
gives no ``max_tokens`` gets the profile's ``max_tokens`` and one may ask for at most its
``max_tokens_cap``. Without a profile the bundled one's bounds hold (256, at most 448).

So do the other lengths a real model's scale sets (step size, depth, chunks, workspace: the profile's
``[scale]``) and its sampling (``[sampling]``): a strategy lists, in ``PROFILE_DEFAULTS``, the parameters
whose default the profile gives and how; a request that omits one gets the profile's value. The class
defaults are the bundled model's.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from orchestrator.profile import BUNDLED, VALIDATION_KEY, ModelProfile
from orchestrator.types import SamplingSpec

Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="Sampling temperature.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")]
# The upper bound is the model profile's `max_tokens_cap` (see the module docstring), not a constant here.
MaxTokens = Annotated[int, Field(ge=1, description="Most new tokens per sample (default and cap: the model profile's).")]
Seed = Annotated[int | None, Field(description="Engine seed; None for fresh randomness.")]

_BUNDLED = BUNDLED["bundled"]


def profile_of(info: ValidationInfo) -> ModelProfile | None:
    """The model profile a validation was given in its context, if any."""
    ctx = info.context
    profile = ctx.get(VALIDATION_KEY) if isinstance(ctx, dict) else None
    return profile if isinstance(profile, ModelProfile) else None


# A parameter's default from the served model's profile; None keeps the class default.
FromProfile = Callable[[ModelProfile], Any]


class Sampling(BaseModel):
    """Temperature, nucleus mass, the token bound per sample and the engine seed; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    temperature: Temperature = 0.8
    top_p: TopP = 1.0
    max_tokens: MaxTokens = 256
    seed: Seed = None

    # Parameters whose default is the profile's (see the module docstring); a subclass extends the mapping.
    PROFILE_DEFAULTS: ClassVar[Mapping[str, FromProfile]] = {
        "max_tokens": lambda p: p.max_tokens,
        "temperature": lambda p: p.sampling.temperature,
        "top_p": lambda p: p.sampling.top_p,
    }

    @model_validator(mode="before")
    @classmethod
    def _profile_default(cls, data: Any, info: ValidationInfo) -> Any:
        # Only a request that says nothing gets the profile's default; an explicit value is checked below.
        profile = profile_of(info)
        if profile is None or not isinstance(data, dict):
            return data
        filled = {name: value(profile) for name, value in cls.PROFILE_DEFAULTS.items() if name not in data}
        return {**data, **{k: v for k, v in filled.items() if v is not None}}

    @field_validator("max_tokens")
    @classmethod
    def _within_cap(cls, v: int, info: ValidationInfo) -> int:
        profile = profile_of(info) or _BUNDLED
        if v > profile.max_tokens_cap:
            raise ValueError(f"max_tokens {v} exceeds {profile.max_tokens_cap}, the cap of model profile {profile.name!r}")
        return v

    def seed_at(self, offset: int) -> int | None:
        """The seed of a call ``offset`` away from the request's (None when the request has none)."""
        return None if self.seed is None else self.seed + offset

    def sampling(self, prompt: str, *, n: int = 1, seed_offset: int = 0) -> SamplingSpec:
        """One engine call of ``n`` samples of ``prompt`` with these parameters."""
        return SamplingSpec(
            prompt=prompt, n=n, max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed_at(seed_offset)
        )
