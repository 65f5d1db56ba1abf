"""docs/strategies.md's limits table says what the code does: every strategy's defaults under each shipped profile."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.profile import BUNDLED
from strategies import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("bundled", "qwen-math", "r1-distill")


def cell(name: str, profile: str) -> str:
    """One strategy's limits under one profile, as the table words them."""
    p = REGISTRY[name].parse({}, profile=BUNDLED[profile])
    out = [f"{p.max_tokens} tokens"]
    if hasattr(p, "max_steps"):
        out.append(f"steps of {p.step_tokens}, {p.max_steps} iterations" + (f"; tau {p.tau}" if hasattr(p, "tau") else ""))
    elif hasattr(p, "max_depth"):
        out.append(f"steps of {p.step_tokens}, depth {p.max_depth}")
    elif name == "atts":
        ref = REGISTRY[name].parse({"mode": "reference"}, profile=BUNDLED[profile])
        out.append(f"chunks of {p.chunk} (reference {ref.chunk}), {p.max_turns} turns")
    elif hasattr(p, "kappa"):
        out.append(f"kappa {p.kappa}")
    return "; ".join(out)


def test_the_limits_table_is_the_codes():
    text = (ROOT / "docs" / "strategies.md").read_text()
    table = text.split("<!-- limits-table -->", 1)[1].split("<!-- /limits-table -->", 1)[0]
    rows = [r for r in table.strip().splitlines()[2:]]
    listed = []
    for row in rows:
        names_cell, *cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`(\w+)`", names_cell)
        listed += names
        for name in names:
            assert [cell(name, p) for p in PROFILES] == cells, name
    assert sorted(listed) == sorted(REGISTRY)
