"""Strategy `auto`: the most accurate measured (strategy, parameters) whose mean cost fits the request's budget.

Candidates come from stored evaluation runs of the requested model (``eval_runs`` / ``eval_results``); with
none, from :data:`BUILTIN`, a small table of self-consistency settings with costs measured on the bundled
`target` (``models/metrics.json``). A candidate fits when its mean total tokens is within the budget's ``total_tokens`` and
its mean dollar cost within ``cost_usd`` (when set). Ties in accuracy go to the cheaper one. When nothing
fits, the cheapest candidate runs, and the budget cuts it as it would any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from orchestrator.budget import Budget


@dataclass(frozen=True)
class Measured:
    strategy: str
    params: Mapping[str, Any]
    accuracy: float
    mean_tokens: float
    mean_cost_usd: float = 0.0
    problems: int = 0
    source: str = "builtin"
    extra: Mapping[str, Any] = field(default_factory=dict)


# Self-consistency on the bundled target, from models/metrics.json: pass@1 and maj@16 on the test split;
# tokens = ~55 prompt + ~56 completion per sample. Used only until real evaluation results are stored.
BUILTIN: tuple[Measured, ...] = (
    Measured("self_consistency", {"n": 1}, accuracy=0.505, mean_tokens=111),
    Measured("self_consistency", {"n": 16}, accuracy=0.607, mean_tokens=951),
)


def choose(candidates: Sequence[Measured], budget: Budget, *, allowed: Sequence[str]) -> Measured:
    """The pick for ``budget`` among candidates whose strategy is in ``allowed`` (registered)."""
    usable = [c for c in candidates if c.strategy in allowed] or [c for c in BUILTIN if c.strategy in allowed]
    if not usable:
        raise ValueError("no strategy is both measured and registered")

    def fits(c: Measured) -> bool:
        if budget.total_tokens is not None and c.mean_tokens > budget.total_tokens:
            return False
        return budget.cost_usd is None or c.mean_cost_usd <= budget.cost_usd

    fitting = [c for c in usable if fits(c)]
    if not fitting:
        return min(usable, key=lambda c: (c.mean_tokens, c.mean_cost_usd))
    return max(fitting, key=lambda c: (c.accuracy, -c.mean_tokens, -c.mean_cost_usd))
