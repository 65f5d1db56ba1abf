"""Pure helpers over scores that strategies and verifiers share: step-score aggregation and voting."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Literal, Sequence

from orchestrator.errors import InvalidRequest

Aggregation = Literal["last", "min", "prod", "mean"]


def aggregate(scores: Sequence[float], how: Aggregation = "last") -> float:
    """One number for a solution from its step scores. No steps aggregates to 0.0 (documented choice:
    nothing to vouch for ranks below anything scored)."""
    if not scores:
        return 0.0
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    if how == "mean":
        return sum(scores) / len(scores)
    raise InvalidRequest(f"unknown aggregation {how!r}; expected last, min, prod or mean", param="aggregation")


def weighted_vote(pairs: Iterable[tuple[str | None, float]]) -> str | None:
    """The answer with the largest total weight; ties go to the answer seen first; None answers never win."""
    totals: dict[str, float] = defaultdict(float)
    for answer, weight in pairs:
        if answer is not None:
            totals[answer] += weight
    if not totals:
        return None
    return max(totals, key=lambda a: totals[a])  # max keeps the first of equal keys (dicts keep order)
