"""ATTS on the bundled models, both modes: measured rejection rate against alpha, and ATTS against sampling
the target alone.

    python -m bench.atts [--problems 60] [--calibration-problems 100] [--n 4] [--alphas 0.1 0.3 0.5] [--modes line reference] [--family v1|v2]

One run, one local Ray pool (a bundled family's `target` as the policy, its `draft` as the draft, served with
the family's profile: ``bench.family``), a temporary SQLite database:

1. calibration, per mode on its own chunking: ``python -m deploy.calibrate``'s procedure on the dev split (the
   draft writes every chunk, the target scores each);
2. for every mode and alpha, ATTS over the test problems with the calibration set frozen (no online update, so
   every alpha is tested against the same set): the share of draft chunks rejected (all conformal tests, and
   each turn's first chunk alone), the share of turns the target took over, accuracy, wall time;
3. the target alone: majority over the same ``n`` samples (self-consistency) on the same problems.

Goals: rejection rate within +-0.05 of alpha in both modes (issues 8 and 26); ATTS >= 3x less wall time than
the target alone at no lower accuracy (issue 8). Writes bench/results/atts.json and atts.md (atts_v2.* for the
v2 family).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.family import Family, Served, add_arguments, family_of, serve
from deploy.assembly import strategy_context
from deploy.calibrate import collect
from orchestrator.config import REPO_ROOT
from orchestrator.db.store import Store
from orchestrator.types import SamplingSpec, SubCall, problem_seed
from strategies import REGISTRY, atts

RESULTS = REPO_ROOT / "bench" / "results"


def problems(fam: Family, split: str, count: int, seed: int) -> list[Any]:
    return fam.problems(split, -(-count // len(fam.task.LEVELS)), seed=seed)[:count]


async def run_config(served: Served, strategy: str, params: dict[str, Any], test: list[Any], concurrency: int) -> dict[str, Any]:
    """Every test problem through ``strategy``; accuracy, wall time and what ATTS reported."""
    fam, pool = served.family, served.pool
    spec = REGISTRY[strategy]
    sem = asyncio.Semaphore(concurrency)
    correct: list[bool] = []
    latency: list[float] = []
    tokens: dict[str, int] = {}
    calls: dict[str, int] = {}
    counts = dict.fromkeys(("chunks", "rejected", "turns", "first_rejected", "takeovers"), 0)

    async def one(k: int, p: Any) -> None:
        async def sink(call: SubCall) -> None:
            tokens[call.role] = tokens.get(call.role, 0) + call.usage.total_tokens
            key = f"{call.role} {call.kind}"
            calls[key] = calls.get(key, 0) + 1

        async with sem:
            ctx = strategy_context(pool, served.tools, sink=sink, lengths=served.lengths, target_model="target")
            t0 = time.perf_counter()
            own = {**params, "seed": problem_seed(params.get("seed"), k)}
            r = await spec.run(await fam.problem(pool, p.question), ctx, spec.params(**own))
            latency.append(time.perf_counter() - t0)
        correct.append(fam.correct(p, r.text))
        for key in counts:
            counts[key] += int(r.info.get(key, 0))  # type: ignore[call-overload]
        bar.update()

    bar = tqdm(total=len(test), desc=f"{strategy} {params}", unit="problem", mininterval=10)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(k, p) for k, p in enumerate(test)))
    wall = time.perf_counter() - t0
    bar.close()
    return {
        "strategy": strategy,
        "params": params,
        "problems": len(test),
        "accuracy": round(statistics.fmean(map(float, correct)), 4),
        "wall_s": round(wall, 2),
        "mean_latency_s": round(statistics.fmean(latency), 3),
        "tokens_by_role": {k: round(v / len(test), 1) for k, v in sorted(tokens.items())},
        "calls_per_problem": {k: round(v / len(test), 2) for k, v in sorted(calls.items())},
        **counts,
        "rejection_rate": rate(counts["rejected"], counts["chunks"]),
        "first_rejection_rate": rate(counts["first_rejected"], counts["turns"]),
        "takeover_rate": rate(counts["takeovers"], counts["turns"]),
    }


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def decode_speed(served: Served, role: str, *, prompts: int = 16, n: int = 4, tokens: int = 128) -> float:
    """Generated tokens per second of ``role``'s engine on a fixed batch (EOS ignored): what a token costs each
    model here, the ratio ATTS's speed-up rests on."""
    fam, pool = served.family, served.pool
    qs = [(await fam.problem(pool, p.question)).prompt for p in problems(fam, "dev", prompts, 7)]
    t0 = time.perf_counter()
    gens = await asyncio.gather(*(pool.generate(role, SamplingSpec(prompt=q, n=n, max_tokens=tokens, ignore_eos=True, seed=i)) for i, q in enumerate(qs)))
    return sum(g.usage.completion_tokens for g in gens) / (time.perf_counter() - t0)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.from_url(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            async with serve(family_of(args), ["target", "draft"], calibration=store.calibration) as served:
                return await measure(served, store, args)
        finally:
            store.engine.dispose()


async def measure(served: Served, store: Store, args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate every mode on dev, then run ATTS at every alpha and the target alone on test (``store`` is
    the served toolbox's calibration store)."""
    fam, pool = served.family, served.pool
    test = problems(fam, "test", args.problems, args.seed + 100)
    rows: list[dict[str, Any]] = []
    calibration: dict[str, dict[str, Any]] = {}
    t_start = time.perf_counter()
    await decode_speed(served, "draft", prompts=2)  # warm both engines up before timing them
    await decode_speed(served, "policy", prompts=2)
    speed = {"draft": round(await decode_speed(served, "draft"), 1), "target": round(await decode_speed(served, "policy"), 1)}
    base = {"n": args.n, "seed": args.seed, "max_turns": args.max_turns, "dataset": fam.dataset}
    cal_questions = [p.question for p in problems(fam, "dev", args.calibration_problems, args.seed)]
    for mode in args.modes:
        t0 = time.perf_counter()
        params = atts.Params(**base, mode=mode, resamples=args.resamples, update_calibration=False)
        scores = await collect(pool, cal_questions, params, tools=served.tools, target_model="target")
        name = atts.calibration_name("draft", "target", fam.dataset, params.chunking)
        await store.calibration.add_scores(name, scores=scores, model="draft->target", keep=atts.CALIBRATION_WINDOW, replace=True)
        calibration[mode] = {"name": name, "questions": len(cal_questions), "scores": len(scores), "seconds": round(time.perf_counter() - t0, 1)}
        for alpha in args.alphas:
            own = {**base, "mode": mode, "resamples": args.resamples, "alpha": alpha, "update_calibration": False}
            row = await run_config(served, "atts", own, test, args.concurrency)
            row.update(mode=mode, alpha=alpha, chunk_tokens=params.chunk, resamples=params.retries)
            rows.append(row)
    rows.append(await run_config(served, "self_consistency", {"n": args.n, "seed": args.seed}, test, args.concurrency))
    return {
        "settings": {**vars(args), "out": str(args.out), "models": str(fam.models)},
        "decode_tokens_per_s": speed,
        "calibration": calibration,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "goals": goals(rows),
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    target = next(r for r in rows if r["strategy"] == "self_consistency")
    out: dict[str, Any] = {}
    for r in rows:
        if r["strategy"] != "atts":
            continue
        speedup = target["wall_s"] / r["wall_s"]
        out[f"{r['mode']} alpha={r['alpha']}"] = {
            "rejection_rate": r["rejection_rate"],
            "within_0.05": abs(r["rejection_rate"] - r["alpha"]) <= 0.05,
            "first_rejection_rate": r["first_rejection_rate"],
            "first_within_0.05": abs(r["first_rejection_rate"] - r["alpha"]) <= 0.05,
            "takeover_rate": r["takeover_rate"],
            "wall_time_speedup_vs_target": round(speedup, 3),
            "accuracy_delta_vs_target": round(r["accuracy"] - target["accuracy"], 4),
            "met_3x_at_no_lower_accuracy": speedup >= 3 and r["accuracy"] >= target["accuracy"],
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| strategy | mode | alpha | accuracy | rejection rate (all tests) | first-chunk rejection rate | takeover rate | tests | target scorings per problem | wall (s) | tokens per problem by role |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.3f}"

    for r in report["rows"]:
        by_role = ", ".join(f"{k} {v:.0f}" for k, v in r["tokens_by_role"].items())
        scorings = r["calls_per_problem"].get("policy score")
        lines.append(
            f"| {r['strategy']} | {r.get('mode', '')} | {r.get('alpha', '')} | {r['accuracy']:.3f} | {fmt(r['rejection_rate'])} | {fmt(r['first_rejection_rate'])} "
            f"| {fmt(r['takeover_rate'])} | {r['chunks'] or ''} | {'' if scorings is None else f'{scorings:.1f}'} | {r['wall_s']:.1f} | {by_role} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=60, help="Test problems, spread evenly over the task's levels.")
    ap.add_argument("--calibration-problems", type=int, default=100, help="Dev problems the calibration set is built from.")
    ap.add_argument("--n", type=int, default=4, help="Samples per problem (ATTS and the target alone).")
    ap.add_argument("--max-turns", type=int, default=16, help="Most chunks per ATTS sample.")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--modes", nargs="+", choices=["line", "reference"], default=["line", "reference"], help="ATTS modes, each calibrated on its own chunking.")
    ap.add_argument("--resamples", type=int, default=0, help="ATTS draft resamples of a rejected chunk (default 0, as both modes' defaults).")
    ap.add_argument("--concurrency", type=int, default=4, help="Problems in flight at once.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="Report file (default bench/results/atts.json, atts_v2.json for v2).")
    add_arguments(ap)
    args = ap.parse_args()
    args.out = args.out or RESULTS / ("atts.json" if args.family == "v1" else f"atts_{args.family}.json")
    report = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(json.dumps(report["goals"], indent=2))
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
