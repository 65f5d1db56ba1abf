"""Every strategy on the bundled test split: accuracy versus total tokens and versus wall time, N = 4, 8, 16.

    python -m bench.strategies [--problems 30] [--concurrency 4] [--ns 4 8 16] [--seed 0] [--seeds 0 1] [--family v1|v2]

One run: a bundled family's `target` policy and `prm` on a local Ray pool, with the toolbox a server of that
family builds from its profile (``bench.family``: v1, the arithmetic task, by default; ``--family v2`` for
Countdown, ``--models`` for a recipe's output directory); problems drawn evenly over the levels of the
task's test split; every (strategy, N) runs over all problems, ``--concurrency`` problems at a time,
once per sampling seed (``--seeds``, default ``--seed``), each problem with its own seed (seed x 1000 + its
index); a row pools its seeds and keeps each seed's accuracy and tokens (``by_seed``).
Tokens are what the ledger holds: policy prompt + completion plus verifier (PRM) tokens; ``generated`` is
policy completion tokens only; ``sequential`` is the PDR paper's latency proxy. Wall time is the mean
latency of one request (under the stated concurrency, so comparable only within this run).

Goals checked and written into the JSON:

- FFS versus majority@N: >= 40% fewer generated tokens at no lower accuracy, and time-to-answer <= 1.1x the
  winning sample's own time (its generate call's latency).
- PDR versus single pass at matched sequential tokens: >= +5 points (single pass is run with its
  ``max_tokens`` raised to PDR's mean sequential tokens: it may think as long as PDR's chain).
- Adaptive consistency versus self-consistency at the same N: >= 2x fewer total tokens at accuracy within
  1 point, pooled and at every seed (its samples are self-consistency's first ones: same per-sample seeds).
- DVTS (n / beam_width independent greedy subtrees) beside beam search at the same n and beam width.
- ER-PRM versus beam search: ``early_rejection`` waits for n finished beams as beam search does (equal
  candidate counts, ``mean_candidates``); ``early_rejection_reference`` is the reference's search
  (n / beam_width finished beams, top beam answers).

Writes bench/results/strategies.json (strategies_v2.json for the v2 family), a Markdown table (strategies.md)
and, with plotly installed, an interactive plot (strategies.html).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from bench.family import Family, Served, add_arguments, family_of, serve
from orchestrator.config import REPO_ROOT
from deploy.assembly import strategy_context
from orchestrator.protocols import StepClustering
from orchestrator.types import Candidate, SubCall
from strategies import REGISTRY

RESULTS = REPO_ROOT / "bench" / "results"


@dataclass
class Row:
    strategy: str
    n: int | None
    params: dict[str, Any]
    correct: list[bool] = field(default_factory=list)
    total_tokens: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    sequential: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)  # 2 x parameters x tokens computed (not cached), policy and PRM
    peak_live_nodes: list[int] = field(default_factory=list)  # tree searches: most nodes held at one depth
    # Tree searches: generated tokens of the retained tree (growing nodes and their ancestors, shared ones once),
    # averaged over the search's depths (the reference's average KV size) and at its largest depth.
    retained_avg: list[float] = field(default_factory=list)
    retained_peak: list[int] = field(default_factory=list)
    cluster_share: list[float] = field(default_factory=list)  # ETS: clusters / open nodes, averaged over depths
    latency: list[float] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)  # candidates the answer was chosen among
    samples: list[int] = field(default_factory=list)  # adaptive sampling: samples drawn
    by_seed: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # seed -> correct, total_tokens
    winner_latency: list[float] = field(default_factory=list)  # FFS: the winning sample's own call
    # Majority@N: what FFS would generate on these very samples if every loser stopped the instant the
    # first answered sample ended (FFS uses the same per-sample seeds, so these are its samples too).
    ffs_ideal: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        mean = lambda xs: round(statistics.fmean(xs), 3) if xs else None  # noqa: E731
        return {
            "strategy": self.strategy,
            "n": self.n,
            "params": self.params,
            "problems": len(self.correct),
            "accuracy": mean([float(c) for c in self.correct]),
            "mean_total_tokens": mean(self.total_tokens),
            "mean_generated_tokens": mean(self.generated),
            "mean_sequential_tokens": mean(self.sequential),
            "mean_gflops": mean([f / 1e9 for f in self.flops]),
            "mean_peak_live_nodes": mean(self.peak_live_nodes),
            "mean_retained_tokens": mean(self.retained_avg),
            "mean_peak_retained_tokens": mean(self.retained_peak),
            "mean_cluster_share": mean(self.cluster_share),
            "mean_latency_s": mean(self.latency),
            "mean_candidates": mean(self.candidates),
            "mean_samples": mean(self.samples),
            "by_seed": {
                str(s): {"problems": len(v["correct"]), "accuracy": mean(v["correct"]), "mean_total_tokens": mean(v["total_tokens"])}
                for s, v in self.by_seed.items()
            },
            "mean_winner_latency_s": mean(self.winner_latency),
            "mean_ffs_ideal_generated": mean(self.ffs_ideal),
        }


# Rows that run a strategy under another name (its parameters differ).
ALIASES = {"first_finish_sync": "first_finish", "early_rejection_reference": "early_rejection", "adaptive_consistency_dev": "adaptive_consistency"}
# Adaptive consistency's wave parameters chosen on the dev split (SC@16 samples of 150 dev problems x 2 seeds,
# the stopping rule replayed over them): stop when 2 of the first 3 agree. The row `adaptive_consistency`
# keeps the strategy's defaults (min_samples 4, wave 4, confidence 0.95, the paper's target).
ADAPTIVE_DEV = {"min_samples": 3, "wave": 4, "confidence": 0.65}


def configs(ns: list[int], seed: int) -> list[tuple[str, int | None, dict[str, Any]]]:
    """The rows: (row name, N, parameters); a ``seed`` parameter is replaced per problem (:func:`seed_for`)."""
    out: list[tuple[str, int | None, dict[str, Any]]] = [("single_pass", None, {}), ("sequential_refinement", None, {"rounds": 3, "seed": seed})]
    for n in ns:
        width = 2 if n == 4 else 4
        out += [
            ("self_consistency", n, {"n": n, "seed": seed}),
            ("adaptive_consistency", n, {"n": n, "seed": seed}),
            ("adaptive_consistency_dev", n, {**ADAPTIVE_DEV, "n": n, "seed": seed}),
            ("best_of_n", n, {"n": n, "seed": seed}),
            ("beam_search", n, {"n": n, "beam_width": width, "seed": seed}),
            ("dvts", n, {"n": n, "beam_width": width, "seed": seed}),
            ("early_rejection", n, {"n": n, "beam_width": width, "seed": seed}),
            ("early_rejection_reference", n, {"n": n, "beam_width": width, "finished_beams": n // width, "selection": "top_beam", "seed": seed}),
            ("rebase", n, {"width": n, "seed": seed}),
            ("ets", n, {"width": n, "seed": seed}),
            ("first_finish", n, {"n": n, "seed": seed}),
            ("first_finish_sync", n, {"n": n, "seed": seed, "mode": "sync"}),
            ("pdr", n, {"schedule": [n, max(1, n // 2), 1], "seed": seed}),
        ]
    return out


def ffs_ideal(candidates: Sequence[Candidate]) -> int:
    """Tokens generated if all samples ran in lockstep until the shortest one with an answer ended."""
    answered = [c.tokens for c in candidates if c.answer is not None] or [c.tokens for c in candidates]
    stop = min(answered)
    return sum(min(c.tokens, stop) for c in candidates)


def seed_for(seed: int, index: int) -> int:
    """Problem ``index``'s own seed under sampling seed ``seed`` (room for 1000 problems per seed)."""
    return seed * 1000 + index


async def run_one(served: Served, row: Row, strategy: str, p: Any, *, seed: int | None = None, clusterer: StepClustering | None = None) -> None:
    """Solve ``p`` (a problem of the served family's task) with ``strategy`` and ``row.params`` (its ``seed``
    replaced by ``seed``); record what it cost in ``row``. ``clusterer`` replaces the served toolbox's."""
    calls: list[SubCall] = []

    async def sink(call: SubCall) -> None:
        calls.append(call)

    fam, pool = served.family, served.pool
    tools = served.tools if clusterer is None else dataclasses.replace(served.tools, clusterer=clusterer)
    ctx = strategy_context(pool, tools, sink=sink, lengths=served.lengths)
    spec = REGISTRY[strategy]
    t0 = time.perf_counter()
    params = {**row.params, "seed": seed} if "seed" in row.params and seed is not None else row.params
    result = await spec.run(await fam.problem(pool, p.question), ctx, spec.params(**params))
    row.latency.append(time.perf_counter() - t0)
    row.correct.append(fam.correct(p, result.text))
    row.total_tokens.append(ctx.tally.total_tokens)
    row.candidates.append(len(result.candidates))
    if "samples" in result.info:
        row.samples.append(int(result.info["samples"]))  # type: ignore[call-overload]
    if "seed" in row.params and seed is not None:
        per = row.by_seed.setdefault(seed // 1000, {"correct": [], "total_tokens": []})
        per["correct"].append(float(row.correct[-1]))
        per["total_tokens"].append(row.total_tokens[-1])
    row.generated.append(ctx.tally.usage.completion_tokens)
    row.sequential.append(result.sequential_tokens or ctx.tally.sequential_tokens)
    # Tokens a model actually computed: prompt tokens the prefix cache served cost no forward pass.
    computed = {kind: sum(c.usage.total_tokens - c.usage.cached_tokens for c in calls if c.kind == kind) for kind in ("generate", "score")}
    row.flops.append(2.0 * (fam.parameters("target") * computed["generate"] + fam.parameters("prm") * computed["score"]))
    live = [int(t["live_nodes"]) for t in result.trace if "live_nodes" in t]  # type: ignore[call-overload]
    if live:
        row.peak_live_nodes.append(max(live))
        retained = [int(t["retained_tokens"]) for t in result.trace if "retained_tokens" in t]  # type: ignore[call-overload]
        row.retained_avg.append(statistics.fmean(retained))
        row.retained_peak.append(max(retained))
    shares = [len(set(t["clusters"])) / len(t["clusters"]) for t in result.trace if t.get("clusters")]  # type: ignore[arg-type]
    if shares:
        row.cluster_share.append(statistics.fmean(shares))
    if row.strategy == "first_finish":  # async: one call per sample, branch = sample index
        row.winner_latency.append(next(c.latency_s for c in calls if c.branch == str(result.info["winner"])))
    if row.strategy == "self_consistency":
        row.ffs_ideal.append(ffs_ideal(result.candidates))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    async with serve(family_of(args), ["target", "prm"], embedder=True) as served:
        return await run_rows(served, args)


def problems_of(fam: Family, args: argparse.Namespace) -> list[Any]:
    """``args.problems`` test problems of the family's task, evenly over its levels, drawn by ``args.seed``."""
    return fam.problems("test", max(1, args.problems // len(fam.task.LEVELS)), seed=args.seed + 100)


async def run_rows(served: Served, args: argparse.Namespace) -> dict[str, Any]:
    """Every row of ``args`` (problems, ns, seeds, only, concurrency) on ``served``: the report."""
    fam = served.family
    problems = problems_of(fam, args)
    sem = asyncio.Semaphore(args.concurrency)
    rows: list[Row] = []
    t_start = time.perf_counter()
    seeds = args.seeds or [args.seed]
    todo = [c for c in configs(args.ns, seeds[0]) if not args.only or c[0] in args.only]
    with tqdm(total=len(todo) * len(problems) * len(seeds), desc="strategies", unit="req") as bar:
        for name, n, params in todo:
            row = Row(name, n, params)

            async def one(p: Any, seed: int) -> None:
                async with sem:
                    await run_one(served, row, ALIASES.get(name, name), p, seed=seed)
                bar.update()

            # Seed by seed, so that each seed's requests meet the same load.
            for s in seeds:
                await asyncio.gather(*(one(p, seed_for(s, i)) for i, p in enumerate(problems)))
            rows.append(row)
            bar.set_postfix_str(f"{name}@{n}: {statistics.fmean(map(float, row.correct)):.2f}")
        # Single pass allowed PDR's sequential budget (matched: the PDR paper's comparison), within what the
        # profile lets one call ask for.
        pdr_seq = [statistics.fmean(r.sequential) for r in rows if r.strategy == "pdr"]
        if pdr_seq:
            params = {"max_tokens": min(int(max(pdr_seq)), fam.profile.max_tokens_cap)}
            row = Row("single_pass_matched", None, params)
            for p in problems:
                await run_one(served, row, "single_pass", p)
            rows.append(row)
    summaries = [r.summary() for r in rows]
    return {
        "settings": {
            "family": fam.name, "models": str(fam.models), "problems": len(problems), "concurrency": args.concurrency, "ns": args.ns,
            "seed": args.seed, "seeds": args.seeds or [args.seed],
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "rows": summaries,
        "goals": goals(summaries),
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["strategy"], r["n"]): r for r in rows}
    out: dict[str, Any] = {}
    for (name, n), r in by.items():
        if name != "first_finish":
            continue
        mv = by[("self_consistency", n)]
        saving = 1 - r["mean_generated_tokens"] / mv["mean_generated_tokens"]
        out[f"ffs_vs_majority@{n}"] = {
            "generated_token_saving": round(saving, 3),
            "ideal_lockstep_saving": round(1 - mv["mean_ffs_ideal_generated"] / mv["mean_generated_tokens"], 3),
            "accuracy_delta": round(r["accuracy"] - mv["accuracy"], 3),
            "time_to_answer_over_winner": round(r["mean_latency_s"] / r["mean_winner_latency_s"], 3),
            "met": saving >= 0.4 and r["accuracy"] >= mv["accuracy"] and r["mean_latency_s"] <= 1.1 * r["mean_winner_latency_s"],
        }
    for (name, n), r in by.items():
        if name in ("early_rejection", "early_rejection_reference") and ("beam_search", n) in by:
            bs = by[("beam_search", n)]
            ratio = bs["mean_gflops"] / r["mean_gflops"]
            out[f"{name}_vs_beam_search@{n}"] = {
                "flops_ratio": round(ratio, 3),
                "accuracy_delta": round(r["accuracy"] - bs["accuracy"], 3),
                "candidates": [r.get("mean_candidates"), bs.get("mean_candidates")],
                "met": ratio >= 2 and r["accuracy"] >= bs["accuracy"] - 0.01,
            }
    for (name, n), r in by.items():
        if name.startswith("adaptive_consistency") and ("self_consistency", n) in by:
            sc = by[("self_consistency", n)]
            ratio = sc["mean_total_tokens"] / r["mean_total_tokens"]
            per_seed = {}
            for s, a in r.get("by_seed", {}).items():
                b = sc.get("by_seed", {}).get(s)
                if b:
                    per_seed[s] = {
                        "token_ratio": round(b["mean_total_tokens"] / a["mean_total_tokens"], 3),
                        "accuracy_delta": round(a["accuracy"] - b["accuracy"], 3),
                    }
            out[f"{name.replace('adaptive_consistency', 'adaptive')}_vs_self_consistency@{n}"] = {
                "token_ratio": round(ratio, 3),
                "mean_samples": r.get("mean_samples"),
                "accuracy_delta": round(r["accuracy"] - sc["accuracy"], 3),
                "by_seed": per_seed,
                "met": ratio >= 2
                and r["accuracy"] >= sc["accuracy"] - 0.01
                and all(v["token_ratio"] >= 2 and v["accuracy_delta"] >= -0.01 for v in per_seed.values()),
            }
    for (name, n), r in by.items():
        if name == "ets" and ("rebase", n) in by:
            rb = by[("rebase", n)]
            out[f"ets_vs_rebase@{n}"] = {
                "peak_live_nodes_ratio": round(rb["mean_peak_live_nodes"] / r["mean_peak_live_nodes"], 3) if r.get("mean_peak_live_nodes") else None,
                "retained_tokens_ratio": round(rb["mean_retained_tokens"] / r["mean_retained_tokens"], 3) if r.get("mean_retained_tokens") else None,
                "throughput_ratio": round(rb["mean_latency_s"] / r["mean_latency_s"], 3),
                "accuracy_delta": round(r["accuracy"] - rb["accuracy"], 3),
            }
    sp = by.get(("single_pass_matched", None)) or by.get(("single_pass", None))
    if sp is None:
        return out
    for (name, n), r in by.items():
        if name == "pdr":
            out[f"pdr@{n}_vs_single_pass_matched"] = {
                "accuracy_delta": round(r["accuracy"] - sp["accuracy"], 3),
                "pdr_sequential_tokens": r["mean_sequential_tokens"],
                "single_pass_sequential_tokens": sp["mean_sequential_tokens"],
                "met": r["accuracy"] - sp["accuracy"] >= 0.05,
            }
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| strategy | N | accuracy | total tokens | generated | sequential | GFLOPs | latency (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['strategy']} | {r['n'] or ''} | {r['accuracy']:.3f} | {r['mean_total_tokens']:.0f} | {r['mean_generated_tokens']:.0f} "
            f"| {r['mean_sequential_tokens']:.0f} | {r.get('mean_gflops') or 0:.1f} | {r['mean_latency_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> list[Path]:
    """Accuracy against total tokens and against latency: interactive HTML, and an SVG for bench/README.md when
    kaleido finds a Chromium (Debian's `chromium` package will do). Returns the files written."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        return []
    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy vs total tokens", "accuracy vs latency"))
    from plotly.colors import qualitative

    names = dict.fromkeys(r["strategy"] for r in report["rows"])
    palette = qualitative.Dark24  # one colour per strategy, the same in both panels
    for index, name in enumerate(names):
        rs = [r for r in report["rows"] if r["strategy"] == name]
        labels = [f"N={r['n']}" if r["n"] else "" for r in rs]
        for col, key in ((1, "mean_total_tokens"), (2, "mean_latency_s")):
            fig.add_trace(
                go.Scatter(
                    x=[r[key] for r in rs],
                    y=[r["accuracy"] for r in rs],
                    mode="lines+markers",
                    name=name,
                    text=labels,
                    legendgroup=name,
                    showlegend=col == 1,
                    line={"color": palette[index % len(palette)]},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="mean total tokens per problem (policy + PRM)", row=1, col=1)
    fig.update_xaxes(title_text="mean seconds per request", row=1, col=2)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_layout(width=1100, height=450, margin={"t": 40, "b": 40})
    fig.write_html(path, include_plotlyjs="cdn")
    written = [path]
    try:
        fig.write_image(path.with_suffix(".svg"))
        written.append(path.with_suffix(".svg"))
    except Exception as err:  # noqa: BLE001 - no kaleido or no browser: the HTML plot still exists
        print(f"no SVG plot: {err}")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=30, help="Test problems, spread evenly over the task's levels (a multiple of their count).")
    ap.add_argument("--concurrency", type=int, default=4, help="Problems in flight at once.")
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16], help="Sample counts / widths to run.")
    ap.add_argument("--seed", type=int, default=0, help="Draws the problems (and is the sampling seed without --seeds).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[], help="Sampling seeds: every row runs once per seed, pooled.")
    ap.add_argument("--out", type=Path, default=None, help="Report file (default bench/results/strategies.json, strategies_v2.json for v2).")
    ap.add_argument("--only", nargs="+", default=[], help="Run only these strategies (rows merge into --out).")
    ap.add_argument("--replot", action="store_true", help="Only redraw the table and plot from --out.")
    add_arguments(ap)
    args = ap.parse_args()
    args.out = args.out or RESULTS / ("strategies.json" if args.family == "v1" else f"strategies_{args.family}.json")
    if args.replot:
        report = json.loads(args.out.read_text())
    else:
        report = asyncio.run(bench(args))
        if args.only and args.out.exists():  # replace those rows in the last full run, keep the rest
            old = json.loads(args.out.read_text())
            fresh = {(r["strategy"], r["n"]) for r in report["rows"]}
            report["rows"] = [r for r in old["rows"] if (r["strategy"], r["n"]) not in fresh] + report["rows"]
            report["partial_runs"] = old.get("partial_runs", []) + [{"only": args.only, "wall_s": report["wall_s"]}]
            report["settings"], report["wall_s"] = old["settings"], old["wall_s"]
            report["goals"] = goals(report["rows"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    plots = plot(report, args.out.with_suffix(".html"))
    print(markdown(report))
    print(json.dumps(report["goals"], indent=2))
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}" + "".join(f", {p}" for p in plots) + ("" if plots else " (no plot: plotly is not installed)"))


if __name__ == "__main__":
    main()
