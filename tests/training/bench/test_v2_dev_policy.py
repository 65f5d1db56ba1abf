"""training.bench.v2_dev_policy on the smoke v2 family the session's recipe run built (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest

from tasks import countdown

pytestmark = pytest.mark.engine


def test_the_dev_split_comparison_grades_each_model_on_the_same_dev_problems(v2_family, tmp_path):
    """training.bench.v2_dev_policy, the recipe's tool for choosing on dev: a real engine per model, every level,
    every sample graded; a model directory that is not one is refused with a message, not a traceback."""
    import subprocess
    import sys

    out = tmp_path / "dev.json"
    cmd = [sys.executable, "-m", "training.bench.v2_dev_policy", "--model", f"draft={v2_family / 'draft'}", "--per-level", "1", "--samples", "2", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    row = report["rows"]["draft"]
    assert report["split"] == "dev" and row["samples_per_problem"] == 2
    assert set(row["by_level"]) == {str(lv) for lv in countdown.LEVEL_SPECS}
    assert abs(row["truncated"] + row["finished_by_eos"] - 1) < 1e-9 and 0 <= row["pass@1"] <= 1

    bad = subprocess.run([*cmd[:4], f"x={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no config.json" in bad.stderr and "Traceback" not in bad.stderr
