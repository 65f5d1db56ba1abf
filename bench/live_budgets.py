"""The README's evaluation grid under both budget modes, side by side (issue: live budget metering).

    python -m bench.live_budgets [--problems 30] [--budgets 300 1000] [--live-budgets 100 200 300 500 1000]
        [--seed S] [--screenshot docs/img/live-budgets-dashboard.png]

Runs, for ``TTS_BUDGET_MODE`` = ``reserve`` and then ``live``, exactly the documented command

    python -m deploy.evaluate -s self_consistency -s first_finish -s single_pass -b 300 -b 1000 \\
        --params '{"self_consistency": {"n": 4}, "first_finish": {"n": 4}}' --dataset task:test --problems 30

each mode in a fresh data directory (so the server's sample-length history starts empty, as a new server's
does), then reads every problem's request back from the ledger: accuracy, mean tokens, and the most tokens any
one request spent (prompt, completion and verifier tokens of all its sub-calls), which must not pass its
budget. Live mode also runs ``--live-budgets`` (more points for the dashboard's curves). With ``--screenshot``,
the live grid's dashboard is served (``deploy.serve`` on that data directory, policy only) and captured in
headless Chromium. With ``--seed``, the sampling strategies' parameters carry ``seed`` S, so every problem
draws its own seed from S and its position (``orchestrator.types.problem_seed``): both modes and every budget
then sample the same sequences, and the curves differ only by what the budget did. Writes
bench/results/live_budgets.json (``--out``) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from orchestrator.config import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
STRATEGIES = ("self_consistency", "first_finish", "single_pass")
PARAMS = {"self_consistency": {"n": 4}, "first_finish": {"n": 4}}


def grid(mode: str, data_dir: Path, problems: int, budgets: list[int], seed: int | None = None) -> None:
    cmd = [sys.executable, "-m", "deploy.evaluate", *[a for s in STRATEGIES for a in ("-s", s)], *[a for b in budgets for a in ("-b", str(b))]]
    params = PARAMS if seed is None else {name: {**p, "seed": seed} for name, p in PARAMS.items()}
    cmd += ["--params", json.dumps(params), "--dataset", "task:test", "--problems", str(problems), "--name", f"live-budgets-{mode}"]
    env = os.environ | {"TTS_BUDGET_MODE": mode, "TTS_DATA_DIR": str(data_dir)}
    subprocess.run(cmd, env=env, check=True, cwd=REPO_ROOT)


def read(data_dir: Path) -> list[dict]:
    db = create_engine(f"sqlite:///{data_dir / 'tts.db'}")
    rows = []
    with db.connect() as c:
        runs = c.execute(text("SELECT id, strategy, budget FROM eval_runs")).all()
        for run_id, strategy, budget in runs:
            results = c.execute(text("SELECT correct, request_id FROM eval_results WHERE run_id = :r"), {"r": run_id}).all()
            spent = []
            for _, request_id in results:
                ledger = c.execute(
                    text("SELECT COALESCE(SUM(CASE WHEN verifier_tokens > 0 THEN verifier_tokens ELSE prompt_tokens + completion_tokens END), 0) FROM subcalls WHERE request_id = :r"),
                    {"r": request_id},
                ).scalar()
                spent.append(int(ledger))
            rows.append(
                {
                    "strategy": strategy,
                    "budget": budget,
                    "problems": len(results),
                    "accuracy": round(statistics.fmean(float(r[0]) for r in results), 3),
                    "mean_tokens": round(statistics.fmean(spent), 1),
                    "max_tokens_one_request": max(spent),
                    "within_budget": budget is None or max(spent) <= budget,
                }
            )
    return sorted(rows, key=lambda r: (STRATEGIES.index(r["strategy"]), r["budget"] or 0))


def screenshot(data_dir: Path, shot: Path) -> None:
    env = os.environ | {"TTS_DATA_DIR": str(data_dir), "TTS_PORT": "0", "TTS_SERVE_PRM": "false", "TTS_SERVE_DRAFT": "false", "TTS_SERVE_EMBEDDER": "false"}
    log = data_dir / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "deploy.serve"], env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = None
        for _ in range(600):
            found = re.search(r"service ready in .*?(http://\S+)", log.read_text())
            if found:
                url = found.group(1).rstrip("/")
                break
            if server.poll() is not None:
                raise SystemExit(f"deploy.serve exited: {log.read_text()[-2000:]}")
            time.sleep(1)
        if url is None:
            raise SystemExit("deploy.serve did not get ready in 10 minutes")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise SystemExit("no chromium: apt-get install chromium")
        shot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=20000",
             "--window-size=1300,1100", f"--screenshot={shot}", f"{url}/dashboard?grid=live-budgets-live"],
            check=True, capture_output=True, timeout=180,
        )
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--budgets", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--live-budgets", type=int, nargs="*", default=[100, 200, 300, 500, 1000])
    ap.add_argument("--seed", type=int, default=None, help="Sampling seed of self-consistency and first_finish (per problem).")
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "live_budgets.json")
    args = ap.parse_args()
    out: dict = {"problems": args.problems, "budgets": args.budgets, "seed": args.seed, "modes": {}}
    for mode in ("reserve", "live"):
        budgets = sorted(set(args.budgets) | (set(args.live_budgets) if mode == "live" else set()))
        with tempfile.TemporaryDirectory(prefix=f"tts-{mode}-") as tmp:
            grid(mode, Path(tmp), args.problems, budgets, args.seed)
            out["modes"][mode] = read(Path(tmp))
            if mode == "live" and args.screenshot is not None:
                screenshot(Path(tmp), args.screenshot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| mode | strategy | budget | accuracy | mean tokens | most tokens of one request | within budget |", "|---|---|---|---|---|---|---|"]
    for mode, rows in out["modes"].items():
        for r in rows:
            lines.append(f"| {mode} | {r['strategy']} | {r['budget']} | {r['accuracy']:.3f} | {r['mean_tokens']:.0f} | {r['max_tokens_one_request']} | {'yes' if r['within_budget'] else '**no**'} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
