"""Benchmarks; each module is a ``python -m bench.<name>`` command writing under ``bench/results/``."""

from __future__ import annotations

import subprocess

from orchestrator.config import REPO_ROOT


def commit() -> str:
    """The checkout's short commit, for labelling a result ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
