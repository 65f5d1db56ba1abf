"""What a strategy is to the controller: a typed spec (parameters, ``run``, cost bound, needs) and a registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Iterable, Mapping, TypeVar

from pydantic import BaseModel

from orchestrator.context import StrategyContext
from orchestrator.profile import VALIDATION_KEY, ModelProfile
from orchestrator.toolbox import Capability
from orchestrator.types import Problem, StrategyResult

P = TypeVar("P", bound=BaseModel)


def _needs_nothing(params: BaseModel) -> frozenset[Capability]:
    return frozenset()


@dataclass(frozen=True)
class StrategySpec(Generic[P]):
    """A registered strategy: its validated parameters ``params`` and its ``run`` coroutine over them.

    ``worst_case`` bounds the completion tokens a run with given parameters can generate (None: unknown), so
    that a tenant's request reserves only what it can spend. ``needs`` says which capabilities of the
    :class:`~orchestrator.toolbox.Toolbox` a run needs besides the policy; the controller refuses the request
    before any compute when the server lacks one."""

    name: str
    params: type[P]
    run: Callable[[Problem, StrategyContext, P], Awaitable[StrategyResult]]
    summary: str
    worst_case: Callable[[P], int] | None = None
    needs: Callable[[P], frozenset[Capability]] = _needs_nothing

    def parse(self, raw: Mapping[str, Any], *, profile: ModelProfile) -> P:
        """``raw`` validated as this strategy's parameters for a model that writes as ``profile`` says (its
        default and largest ``max_tokens``); raises pydantic's ValidationError."""
        return self.params.model_validate(dict(raw), context={VALIDATION_KEY: profile})


# A registry holds specs of different parameter classes; each spec's ``run`` is only ever handed
# parameters validated by its own ``params``.
AnySpec = StrategySpec[Any]


def registry(specs: Iterable[AnySpec]) -> Mapping[str, AnySpec]:
    """Index specs by name, refusing duplicates (a registry typo must fail at start-up)."""
    out: dict[str, AnySpec] = {}
    for s in specs:
        if s.name in out:
            raise ValueError(f"strategy {s.name!r} registered twice")
        out[s.name] = s
    return out
