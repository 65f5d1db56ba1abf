"""Test-time scaling strategies, one file each; ``REGISTRY`` maps request names to them."""

from __future__ import annotations

from orchestrator.controller import summarize
from strategies import first_finish, self_consistency

REGISTRY = summarize([self_consistency.SPEC, first_finish.SPEC])

__all__ = ["REGISTRY"]
