"""Test-time scaling strategies, one file each; ``REGISTRY`` maps request names to them."""

from __future__ import annotations

from orchestrator.controller import summarize
from strategies import atts, beam_search, best_of_n, early_rejection, ets, first_finish, pdr, rebase, self_consistency, single_pass

REGISTRY = summarize(
    [
        single_pass.SPEC,
        self_consistency.SPEC,
        best_of_n.SPEC,
        beam_search.SPEC,
        early_rejection.SPEC,
        rebase.SPEC,
        ets.SPEC,
        first_finish.SPEC,
        pdr.SPEC,
        pdr.SR_SPEC,
        atts.SPEC,
    ]
)

__all__ = ["REGISTRY"]
