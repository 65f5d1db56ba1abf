"""Prefix reuse of the step-wise strategies under each KV block size, in one run; and what cached scoring saves.

    python -m bench.prefix_reuse [--block-sizes 128 32 64] [--problems 6] [--n 4] [--concurrency 3]

One local Ray pool per block size (bundled `target` as policy, `draft`, `prm`, the packaged embedder; every engine
given that block size), started one after another in this process. The first block size is "before" (128 is
vLLM-CPU's own default, what the service ran with until it chose its own); the others are candidates. On each pool:

1. beam search, ER-PRM, REBASE, ETS, PDR and ATTS over the same test problems (problem seeds fixed, so the
   pools run the same requests): per strategy, the share of prompt tokens served from the prefix cache (the
   ledger's ``cached_tokens`` over its prompt tokens, by stage), mean wall time per request, accuracy, and the
   FLOPs the models computed (2 x parameters x tokens not served from the cache);
2. decode speed of the policy (tokens/s, EOS ignored), so a block size that shares more but decodes slower shows;
3. scoring, on the policy engine: the same solutions scored as before this change (every position, the cache
   skipped) and as ATTS and a PRM's newest step need (the tail only, the cached prefix read): prompt tokens
   computed, wall time, and the largest difference between the two sets of log-probabilities.

Rounds alternate nothing: on 2 shared cores the machine's speed drifts, so compare wall times within one run
only. Writes bench/results/prefix_reuse.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.assembly import strategy_context
from orchestrator.config import REPO_ROOT
from orchestrator.db.store import Store
from orchestrator.toolbox import Toolbox
from orchestrator.types import Problem, SamplingSpec, ScoreSpec, SubCall, problem_seed
from strategies import REGISTRY
from tasks import arithmetic as task

RESULTS = REPO_ROOT / "bench" / "results"
MODEL_OF_ROLE = {"policy": "target", "draft": "draft", "prm": "prm"}


def strategies(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("beam_search", {"n": n, "beam_width": 2, "seed": seed}),
        ("early_rejection", {"n": n, "beam_width": 2, "seed": seed}),
        ("rebase", {"width": n, "seed": seed}),
        ("ets", {"width": n, "seed": seed}),
        ("pdr", {"schedule": [n, max(1, n // 2), 1], "seed": seed}),
        ("atts", {"n": n, "seed": seed}),
    ]


@functools.cache
def parameters(model: str) -> int:
    return int(json.loads((REPO_ROOT / "models" / model / "training.json").read_text())["params"])


@dataclass
class Row:
    correct: list[bool] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    prompt: dict[str, int] = field(default_factory=dict)  # stage -> prompt tokens
    cached: dict[str, int] = field(default_factory=dict)  # stage -> of which served from the cache
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        prompt, cached = sum(self.prompt.values()), sum(self.cached.values())
        return {
            "problems": len(self.correct),
            "errors": self.errors[:3],
            "accuracy": round(statistics.fmean(map(float, self.correct)), 3) if self.correct else None,
            "mean_latency_s": round(statistics.fmean(self.latency), 2) if self.latency else None,
            "mean_gflops": round(statistics.fmean(self.flops) / 1e9, 3) if self.flops else None,
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "cached_share": round(cached / prompt, 3) if prompt else None,
            "cached_share_by_stage": {s: round(self.cached.get(s, 0) / p, 3) for s, p in sorted(self.prompt.items()) if p},
        }


async def run_strategy(pool: Any, tools: Toolbox, name: str, params: dict[str, Any], problems: list[task.Problem], concurrency: int) -> Row:
    spec = REGISTRY[name]
    row = Row()
    sem = asyncio.Semaphore(concurrency)

    async def one(k: int, p: task.Problem) -> None:
        calls: list[SubCall] = []

        async def sink(call: SubCall) -> None:
            calls.append(call)

        async with sem:
            ctx = strategy_context(pool, tools, sink=sink, target_model="target")
            t0 = time.perf_counter()
            try:
                own = {**params, "seed": problem_seed(params.get("seed"), k)}
                result = await spec.run(Problem(task.prompt_for(p.question), question=p.question), ctx, spec.params(**own))
            except Exception as err:  # noqa: BLE001 - one strategy's failure is reported, the run goes on
                row.errors.append(f"{type(err).__name__}: {err}")
                return
            row.latency.append(time.perf_counter() - t0)
        row.correct.append(task.check_answer(p, result.text).correct)
        flops = 0.0
        for c in calls:
            row.prompt[c.stage] = row.prompt.get(c.stage, 0) + c.usage.prompt_tokens
            row.cached[c.stage] = row.cached.get(c.stage, 0) + c.usage.cached_tokens
            model = MODEL_OF_ROLE.get(c.role)
            if model is not None:  # the embedder's share is not counted (no parameter record; it is tiny)
                flops += 2.0 * parameters(model) * (c.usage.total_tokens - c.usage.cached_tokens)
        row.flops.append(flops)

    await asyncio.gather(*(one(k, p) for k, p in enumerate(problems)))
    return row


async def decode_speed(pool: Any, *, prompts: int = 8, n: int = 4, tokens: int = 128) -> float:
    qs = [task.prompt_for(p.question) for p in task.generate("dev", prompts, seed=7)]
    t0 = time.perf_counter()
    gens = await asyncio.gather(*(pool.generate("policy", SamplingSpec(prompt=q, n=n, max_tokens=tokens, ignore_eos=True)) for q in qs))
    return sum(g.usage.completion_tokens for g in gens) / (time.perf_counter() - t0)


async def scoring(pool: Any, *, count: int = 24, tail: int = 24) -> dict[str, Any]:
    """Score ``count`` solutions of the policy's own (just generated, so their prefixes are cached) twice:
    ``start = 0`` (every row; below one block the engine skips the cache, as every score did before) and
    ``start = len - tail`` (the newest ``tail`` tokens: ATTS's chunk, a PRM's newest step; the cache is read)."""
    qs = [task.prompt_for(p.question) for p in task.generate("dev", count, seed=11)]
    gens = await asyncio.gather(*(pool.generate("policy", SamplingSpec(prompt=q, max_tokens=200, temperature=0.0)) for q in qs))
    ids = [tuple(await pool.tokenize("policy", q + g.completions[0].text)) for q, g in zip(qs, gens)]
    out: dict[str, Any] = {}
    full = []
    for label, start_of in (("whole_uncached", lambda x: 0), ("tail_cached", lambda x: max(0, len(x) - tail))):
        t0 = time.perf_counter()
        got = await asyncio.gather(*(pool.score("policy", ScoreSpec(x, start=start_of(x), candidates=(x[-1],))) for x in ids))
        wall = time.perf_counter() - t0
        computed = sum(s.usage.prompt_tokens - s.usage.cached_tokens for s in got)
        out[label] = {"wall_s": round(wall, 3), "prompt_tokens": sum(s.usage.prompt_tokens for s in got), "computed_prompt_tokens": computed}
        full.append(got)
    diff = max(
        abs(a - b) for whole, part in zip(*full) for a, b in zip(whole.logprobs[part.start :], part.logprobs)
    )
    out["max_abs_logprob_diff"] = diff
    out["computed_saving"] = round(1 - out["tail_cached"]["computed_prompt_tokens"] / out["whole_uncached"]["computed_prompt_tokens"], 3)
    out["wall_ratio"] = round(out["whole_uncached"]["wall_s"] / out["tail_cached"]["wall_s"], 2)
    return out


async def one_pool(block: int, args: argparse.Namespace, problems: list[task.Problem]) -> dict[str, Any]:
    from deploy.assembly import toolbox
    from deploy.shipped import seed_shipped
    from orchestrator.config import get_settings
    from orchestrator.profile import BUNDLED
    from workers.config import load_pool_config
    from workers.pool import WorkerPool

    engine = {"block_size": block}
    roles = {
        "policy": {"model": str(REPO_ROOT / "models" / "target"), **engine},
        "draft": {"model": str(REPO_ROOT / "models" / "draft"), **engine},
        "prm": {"model": str(REPO_ROOT / "models" / "prm"), **engine},
        "embedder": {},
    }
    t0 = time.perf_counter()
    config = load_pool_config(None, env={}, default_roles=roles)
    pool = await WorkerPool.from_config(config)
    start_s = time.perf_counter() - t0
    tmp = tempfile.TemporaryDirectory()
    store = Store.from_url(f"sqlite:///{Path(tmp.name) / 'bench.db'}")
    # The bundled family's server: its tag PRM, task refiner, embedder clusterer and draft.
    tools = toolbox(get_settings(clusterer="embedder", refiner="task"), config, pool, BUNDLED["bundled"], calibration=store.calibration)
    try:
        await seed_shipped(store, draft=REPO_ROOT / "models" / "draft", target=REPO_ROOT / "models" / "target", draft_name="draft", target_name="target")
        await decode_speed(pool, prompts=2)  # warm-up
        rows = {}
        for name, params in strategies(args.n, args.seed):
            if args.only and name not in args.only:
                continue
            t1 = time.perf_counter()
            rows[name] = (await run_strategy(pool, tools, name, params, problems, args.concurrency)).summary() | {"params": params}
            print(f"block {block} {name}: {json.dumps({k: v for k, v in rows[name].items() if k != 'cached_share_by_stage'})} ({time.perf_counter() - t1:.0f} s)", flush=True)
        speed = await decode_speed(pool)
        score = await scoring(pool)
        print(f"block {block}: decode {speed:.0f} tok/s; scoring {json.dumps(score)}", flush=True)
    finally:
        await pool.shutdown()
        tmp.cleanup()
    return {"block_size": block, "pool_start_s": round(start_s, 1), "decode_tok_s": round(speed, 1), "scoring": score, "strategies": rows}


def flops_goal(rows: dict[str, Any]) -> dict[str, Any]:
    bs, er = rows.get("beam_search"), rows.get("early_rejection")
    if not bs or not er or not bs["mean_gflops"] or not er["mean_gflops"]:
        return {}
    ratio = bs["mean_gflops"] / er["mean_gflops"]
    delta = (er["accuracy"] or 0) - (bs["accuracy"] or 0)
    return {"flops_ratio": round(ratio, 3), "accuracy_delta": round(delta, 3), "met": ratio >= 2 and delta >= -0.01}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from workers.pool import connect_ray

    connect_ray()
    per_level = max(1, args.problems // 5)
    problems = [p for lv in task.LEVELS for p in task.generate("test", per_level, seed=args.seed + 100, levels=[lv])][: args.problems]
    t0 = time.perf_counter()
    report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "date": time.strftime("%Y-%m-%d"), "pools": []}
    for b in args.block_sizes:
        pool = await one_pool(b, args, problems)
        pool["er_prm_vs_beam_search"] = flops_goal(pool["strategies"])
        report["pools"].append(pool)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every pool: a cut-short run keeps what it measured
    return report


def markdown(report: dict[str, Any]) -> str:
    pools = report["pools"]
    head = " | ".join(f"block {p['block_size']}: cached / s per request" for p in pools)
    lines = [f"| strategy | {head} |", "|---|" + "---|" * len(pools)]
    for name in pools[0]["strategies"]:
        cells = []
        for p in pools:
            r = p["strategies"].get(name) or {}
            cells.append(f"{(r.get('cached_share') or 0) * 100:.0f}% / {r.get('mean_latency_s') or 0:.1f} (acc {r.get('accuracy') or 0:.2f}, {r.get('mean_gflops') or 0:.2f} GFLOP)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| decode tok/s | " + " | ".join(f"{p['decode_tok_s']:.0f}" for p in pools) + " |")
    lines.append("| ER-PRM vs beam FLOPs | " + " | ".join(f"{p['er_prm_vs_beam_search'].get('flops_ratio')}x (acc {p['er_prm_vs_beam_search'].get('accuracy_delta')})" for p in pools) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[128, 32, 64], help="First: the 'before'.")
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", default=[])
    ap.add_argument("--out", type=Path, default=RESULTS / "prefix_reuse.json")
    args = ap.parse_args()
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    report = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
