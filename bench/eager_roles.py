"""Does compiling pay for the small engines besides the policy? Start time and work per engine, eager against compiled.

    python -m bench.eager_roles [--roles prm draft] [--rounds 3]

For each role (the bundled `prm`, which only scores; the bundled `draft`, which generates for ATTS) and each
mode (``enforce_eager`` true, false), a fresh process starts a local Ray and one engine of that role with a
fresh compile cache (first start), measures its work, then a second process does the same on the same cache
(warm start). Work: the PRM scores the step solutions of 64 test problems (the reference solutions and
simulated drafts with slips, as a PRM strategy sends them: 64 concurrent calls per round); the draft
generates 8 samples of 128 tokens for 8 prompts (EOS ignored). Each round is timed; the first is a warm-up.
Writes bench/results/eager_roles.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.config import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


async def _child(role: str, eager: bool, rounds: int) -> dict[str, Any]:
    from training.data import simulated_draft
    from orchestrator.types import SamplingSpec
    from tasks import arithmetic as task
    from verifiers import MathShepherdPRM
    from workers.config import load_pool_config
    from workers.pool import WorkerPool, connect_ray, leave_ray

    connect_ray()
    config = load_pool_config(None, default_roles={role: {"model": str(REPO_ROOT / "models" / role), "enforce_eager": eager, "kv_cache_gib": 1}})
    t0 = time.perf_counter()
    pool = await WorkerPool.from_config(config)
    start_s = time.perf_counter() - t0
    times: list[float] = []
    units = 0
    try:
        if role == "prm":
            prm = MathShepherdPRM(pool)
            problems = task.generate("test", 64, seed=11)
            rng = random.Random(0)
            solutions = [p.solution() if k % 2 == 0 else simulated_draft(p, rng, slip_rate=0.3) for k, p in enumerate(problems)]
            for _ in range(rounds):
                t = time.perf_counter()
                scored = await prm.score_many([p.question for p in problems], solutions)
                times.append(time.perf_counter() - t)
            units = sum(len(s.scores) for s in scored)  # steps scored per round
        else:
            prompts = [task.prompt_for(p.question) for p in task.generate("test", 8, seed=12)]
            for _ in range(rounds):
                t = time.perf_counter()
                gens = await asyncio.gather(
                    *(pool.generate(role, SamplingSpec(prompt=q, n=8, max_tokens=128, temperature=0.8, seed=1, ignore_eos=True)) for q in prompts)
                )
                times.append(time.perf_counter() - t)
            units = sum(g.usage.completion_tokens for g in gens)  # tokens generated per round
    finally:
        await pool.shutdown()
        leave_ray()
    steady = times[1:] or times
    return {"start_s": round(start_s, 1), "round_s": [round(t, 2) for t in times], "units_per_round": units,
            "units_per_s": round(units / statistics.median(steady), 1)}


def run_one(role: str, eager: bool, cache: Path, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "VLLM_CACHE_ROOT": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.eager_roles", "--child", role, "--eager" if eager else "--compiled", "--rounds", str(rounds)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-4000:])
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["process_s"] = round(time.perf_counter() - t0, 1)
    got["load_before"] = round(os.getloadavg()[0], 1)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--roles", nargs="+", default=["prm", "draft"], choices=["prm", "draft"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "eager_roles.json")
    ap.add_argument("--child", choices=["prm", "draft"], help=argparse.SUPPRESS)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.eager, args.rounds))), flush=True)
        return
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "runs": {}}
    for role in args.roles:
        for eager in (True, False):
            cache = Path(tempfile.mkdtemp(prefix=f"tts-eager-{role}-"))
            name = f"{role} {'eager' if eager else 'compiled'}"
            report["runs"][name] = {phase: run_one(role, eager, cache, args.rounds) for phase in ("first", "warm")}
            print(name, json.dumps(report["runs"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
