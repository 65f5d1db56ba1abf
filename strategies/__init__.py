"""Test-time scaling strategies, one file each; ``REGISTRY`` maps request names to them.

A module of this package that defines ``SPEC`` (or ``SPECS``, when it holds several strategies) is a
strategy: adding the file registers it. Shared helpers (``common``, ``params``) define neither.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Iterator

from orchestrator.strategy import AnySpec, registry


def _specs() -> Iterator[AnySpec]:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        yield from getattr(module, "SPECS", ()) or ([module.SPEC] if hasattr(module, "SPEC") else [])


REGISTRY = registry(_specs())

__all__ = ["REGISTRY"]
